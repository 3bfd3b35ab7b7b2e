"""Tasks as values (transformer_jax/tasks/): the registry, batch layouts, BERT masking (proportions,
seeded, resumable, packed), the causal-LM featurizer on lm1b-style records, and the built-in corpus."""

import dataclasses

import numpy as np
import pytest

from transformer_jax import data as D
from transformer_jax import tasks
from transformer_jax.config import BOS_ID, EOS_ID

TEXT = "tjax_text"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    D.prepare(TEXT, data_dir=d)
    return d


@pytest.fixture(scope="module")
def spm(data_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("spm")
    return D.make_task_tokenizer("sentencepiece", TEXT, workdir=work, vocab_size=300, data_dir=data_dir,
                                 symbols=tasks.MaskedLM.symbols)


def test_registry_and_model_follows_task():
    assert tasks.lookup("tjax_numbers") == tasks.Translation("source", "target")
    assert tasks.lookup("tjax_listops/tiny") == tasks.Classification("text", "label")
    assert tasks.lookup("lm1b") == tasks.CausalLM("text")
    assert tasks.lookup("wmt14_translate/de-en") == tasks.Translation("de", "en")
    assert tasks.resolve(TEXT) == tasks.CausalLM("text")
    assert tasks.resolve(TEXT, "masked_lm") == tasks.MaskedLM("text")
    assert tasks.resolve(TEXT, "encoder_classifier") == tasks.Classification("text", "label")
    assert tasks.resolve("lm1b", "masked_lm") == tasks.MaskedLM("text")
    for task, model in [(tasks.Translation(), "Transformer"), (tasks.Classification(), "EncoderClassifier"),
                        (tasks.CausalLM(), "DecoderLM"), (tasks.MaskedLM(), "MaskedLM")]:
        assert task.model_class().__name__ == model
    with pytest.raises(ValueError, match=r"config.model_type='decoder_lm' does not fit config.data.dataset="
                                         r"'tjax_numbers' \(a translation task\); valid for it: transformer"):
        tasks.resolve("tjax_numbers", "decoder_lm")
    with pytest.raises(ValueError, match="config.model_type='bert' is not one of"):
        tasks.resolve("tjax_numbers", "bert")
    with pytest.raises(ValueError, match="mask_rate"):
        tasks.MaskedLM(mask_rate=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tasks.MaskedLM().text = "x"


def test_mask_tokens_selects_15_percent_and_splits_80_10_10():
    """Devlin et al. 2019 §3.1, over ~100k tokens: rates within a few standard errors."""
    vocab, n = 500, 100_000
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, vocab, n).astype(np.int32)
    tokens[::50] = EOS_ID  # specials are never selected
    out = tasks.MaskTokens(mask_id=4, vocab_size=vocab)({"inputs": tokens}, np.random.default_rng(1))
    selected = out["targets"] > 0
    np.testing.assert_array_equal(out["targets"][selected], tokens[selected])  # targets: the originals
    assert not selected[::50].any() and (out["inputs"][::50] == EOS_ID).all()
    np.testing.assert_array_equal(out["inputs"][~selected], tokens[~selected])  # loss-free positions intact
    candidates = (tokens >= 4).sum()
    assert abs(selected.sum() / candidates - 0.15) < 0.005
    masked = (out["inputs"] == 4) & selected
    kept = (out["inputs"] == tokens) & selected
    assert abs(masked.sum() / selected.sum() - 0.8) < 0.015
    # random tokens: about 10%, plus the ~1/vocab of them that draw the original token
    assert abs((selected & ~masked & ~kept).sum() / selected.sum() - 0.1) < 0.01
    assert abs(kept.sum() / selected.sum() - 0.1) < 0.01
    assert out["inputs"][selected & ~masked].min() >= 4


def test_masked_lm_batches_are_seeded_resumable_and_packed(data_dir, spm):
    assert spm.mask_id is not None and spm.decode([spm.mask_id]) == "[MASK]"

    def make(seed=0):
        return D.make_iterator(TEXT, "train", layout=tasks.MaskedLM(), tokenizer=spm, batch_size=4, max_src_len=256,
                               max_tgt_len=8, pack=True, seed=seed, data_dir=data_dir)

    it = make()
    first = [next(it) for _ in range(2)]
    state = it.get_state()
    third = next(it)
    assert {k: v.shape for k, v in third.items()} == {k: (4, 256) for k in ("inputs", "targets", "segment_ids",
                                                                           "positions")}
    assert any((b["segment_ids"].max(-1) > 1).any() for b in (*first, third))  # packed: several paragraphs a row
    again = make()
    for want in first:  # same seed: same examples and the same masks
        got = next(again)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    resumed = make()
    resumed.set_state(state)
    for k, v in next(resumed).items():  # resumed: the masks continue exactly
        np.testing.assert_array_equal(v, third[k])
    other = next(make(seed=1))
    assert not np.array_equal(other["inputs"], first[0]["inputs"])
    b = third
    real = b["segment_ids"] > 0
    selected = b["targets"] > 0
    assert not (selected & ~real).any()  # padding never has a target
    assert 0.08 < selected.sum() / real.sum() < 0.22
    assert ((b["inputs"] == spm.mask_id) <= selected).all()  # [MASK] only where the loss looks
    targets, weights = tasks.MaskedLM().targets_and_weights(b)
    np.testing.assert_array_equal(np.asarray(weights), selected.astype(np.float32))  # loss only on selected


def test_masked_lm_needs_a_mask_piece(data_dir):
    with pytest.raises(ValueError, match=r"needs a tokenizer with a \[MASK\] piece; ByteTokenizer"):
        D.make_iterator(TEXT, "train", layout=tasks.MaskedLM(), tokenizer=D.ByteTokenizer(), batch_size=2,
                        max_src_len=16, max_tgt_len=16, pack=False, seed=0, data_dir=data_dir)


def test_causal_lm_featurizer_on_lm1b_style_records():
    """lm1b's records are {'text': bytes}; the featurizer, padding and packing names need no tfds."""
    task = tasks.lookup("lm1b")
    fz = D.Featurizer(task, D.ByteTokenizer(), max_src_len=4, max_tgt_len=6, too_long="truncate", stats=D.DataStats())
    ex = fz({"text": b"hi there"})  # 8 bytes, cut to T-1 = 5
    ids = [b + 4 for b in b"hi th"]
    np.testing.assert_array_equal(ex["inputs"], [BOS_ID, *ids])
    np.testing.assert_array_equal(ex["targets"], [*ids, EOS_ID])
    assert fz.stats.as_dict()["truncated"] == 1
    row = task.pad(fz({"text": b"ok"}), 4, 6)
    np.testing.assert_array_equal(row["inputs"], [BOS_ID, 111 + 4, 107 + 4, 0, 0, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["positions"], [0, 1, 2, 0, 0, 0])
    assert task.pack_lengths(4, 6) == {"inputs": 6, "targets": 6}
    (args, kwargs) = task.model_inputs(row)
    assert args[0] is row["inputs"] and set(kwargs) == {"segment_ids", "positions"}


def test_builtin_corpus_is_english_prose_with_disjoint_splits(data_dir):
    splits = {s: D.open_source(TEXT, s, data_dir=data_dir) for s in ("train", "validation", "test")}
    texts = {s: {r["text"] for r in src} for s, src in splits.items()}
    assert len(texts["train"]) > 1500 and len(texts["test"]) > 50 and len(texts["validation"]) > 50
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["validation"])
    labels = {int(r["label"]) for r in splits["train"]}
    assert labels == {0, 1}
    sample = b" ".join(sorted(texts["test"])[:20]).decode()
    assert " the " in sample and "::=" not in sample


@pytest.mark.parametrize("name", ["sequence_classification", "token_classification", "question_answering"])
def test_a_model_without_token_types_gets_none(name):
    """DistilBERT (type_vocab_size 0) rejects token types; the task drops them for it, keeps them for BERT."""
    import os

    import transformer_jax as tj

    task = tasks.FINETUNE[name]()
    d = os.path.join(os.path.dirname(__file__), "fixtures", "pretrained", "heads", "distilbert",
                     "sequence_classification")
    model, variables = tj.from_pretrained(d, head=name)
    assert model.cfg.type_vocab_size == 0
    bert = task.for_model(dataclasses.replace(model.cfg, type_vocab_size=2))
    assert bert is task and "token_types" in task.needs and "token_types" in task.batch_shapes(2, 8, 8)
    distil = task.for_model(model.cfg)
    assert "token_types" not in distil.needs and "token_types" not in distil.batch_shapes(2, 8, 8)
    batch = {k: np.ones(s.shape, s.dtype) for k, s in distil.batch_shapes(2, 8, 8).items()}
    args, kwargs = distil.model_inputs(batch)
    assert "token_types" not in kwargs
    model.apply(variables, *args, **kwargs)  # runs (with token types it raises)


def test_question_answering_trains_on_every_window_and_resumes_inside_a_record():
    """run_qa's training features: every window of the context is an example; a window holding the
    whole answer points at its tokens, any other at [CLS] (0, 0). The batches resume exactly, also
    from a state saved between two windows of one record."""
    words = [f"w{i}" for i in range(40)]
    tok = D.Framed(D.WordTokenizer(words + ["who", "is"]), "encoder")
    records = []
    for k in range(6):
        context = " ".join(words[k:k + 30])
        answer = words[k + 20]
        records.append({"question": "who is", "context": context,
                        "answers": {"text": [answer], "answer_start": [context.index(answer + " ")]}})
    task = tasks.FINETUNE["question_answering"](doc_stride=2)
    fz = D.Featurizer(task, tok, 12, 4, "truncate", D.DataStats())
    for r in records:
        examples = fz(r)
        enc = tok(r["question"], r["context"], truncation="only_second", max_length=12, stride=2,
                  return_overflowing_tokens=True)
        assert len(examples) == len(enc["input_ids"]) == 6  # 30 words in windows of 7 advancing by 5
        for ex in examples:
            s, e = int(ex["start_positions"]), int(ex["end_positions"])
            inside = r["answers"]["text"][0] in tok.decode(ex["inputs"][4:]).split()  # [BOS] who is [EOS] context
            assert (s, e) == (0, 0) if not inside else tok.decode(ex["inputs"][s:e + 1]) == r["answers"]["text"][0]
        assert sum(int(ex["start_positions"]) > 0 for ex in examples) >= 1
    args = dict(layout=task, tokenizer=tok, batch_size=3, max_src_len=12, max_tgt_len=4, pack=False, seed=0,
                source=records, repeat=True)
    it = D.make_iterator("qa", "train", **args)
    batches = [next(it) for _ in range(3)]  # 9 windows: the state falls between two windows of a record
    state = it.get_state()
    after = [next(it) for _ in range(3)]
    it2 = D.make_iterator("qa", "train", **args)
    it2.set_state(state)
    for want in after:
        got = next(it2)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert all(b["inputs"].shape == (3, 12) for b in batches)
