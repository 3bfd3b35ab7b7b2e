"""Tests for transformer_jax.data: tfds builders without TensorFlow, tokenizers,
the Grain pipeline (order, sharding, packing, resumable state), ListOps and metrics.

Datasets are prepared in a temporary directory with the tiny configs.
"""

import collections
import json
import random
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from transformer_jax import data as D
from transformer_jax import tasks
from transformer_jax.data import default_task, listops
from transformer_jax.config import BOS_ID, EOS_ID, UNK_ID

NUMBERS = "tjax_numbers/tiny"
LISTOPS = "tjax_listops/tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    D.prepare(NUMBERS, data_dir=d)
    D.prepare(LISTOPS, data_dir=d)
    return d


def _iter(data_dir, **kw):
    args = dict(
        tokenizer=D.ByteTokenizer(),
        batch_size=4,
        max_src_len=24,
        max_tgt_len=72,
        pack=False,
        seed=0,
        data_dir=data_dir,
    )
    args.update(kw)
    dataset = args.pop("task", NUMBERS)
    split = args.pop("split", "train")
    layout = tasks.lookup(dataset, args.pop("text_keys", None))
    return D.make_iterator(dataset, split, layout=layout, **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _segments(tokens, seg_ids, positions):
    """Per-row segments {id: tokens}, checking ids are 1..k, contiguous, then padding."""
    out = []
    for tok, seg, pos in zip(tokens, seg_ids, positions):
        k = int(seg.max())
        n_real = int((seg > 0).sum())
        assert (seg[n_real:] == 0).all() and (tok[n_real:] == 0).all() and (pos[n_real:] == 0).all()
        if k == 0:  # an all-padding row
            continue
        expected_seg = np.concatenate([np.full((seg == s).sum(), s) for s in range(1, k + 1)])
        np.testing.assert_array_equal(seg[:n_real], expected_seg)
        for s in range(1, k + 1):
            m = seg == s
            np.testing.assert_array_equal(pos[m], np.arange(m.sum()))
            out.append(tok[m])
    return out


# --- builders ----------------------------------------------------------------


def test_builders_prepare_as_array_record_without_tensorflow(data_dir):
    numbers = {s: D.open_source(NUMBERS, s, data_dir=data_dir) for s in ("train", "validation", "test")}
    assert [len(numbers[s]) for s in ("train", "validation", "test")] == [2000, 200, 200]
    lops = D.open_source(LISTOPS, "test", data_dir=data_dir)
    assert len(lops) == 50
    assert (epath.Path(data_dir) / "tjax_numbers/tiny/1.0.0").exists()
    assert any("array_record" in p.name for p in (epath.Path(data_dir) / "tjax_numbers/tiny/1.0.0").iterdir())
    assert "tensorflow" not in sys.modules
    # Splits are disjoint; the target is a function of the source.
    srcs = {s: {r["source"] for r in numbers[s]} for s in numbers}
    assert not srcs["train"] & srcs["test"] and not srcs["train"] & srcs["validation"]
    assert not srcs["validation"] & srcs["test"]
    # Prepared twice -> reused, same records.
    D.prepare(NUMBERS, data_dir=data_dir)
    assert D.open_source(NUMBERS, "test", data_dir=data_dir)[7] == numbers["test"][7]


def test_default_task_rules():
    assert default_task.cardinal(4052) == "four thousand fifty-two"
    assert default_task.cardinal(110) == "one hundred ten"
    assert default_task.ordinal(17) == "seventeenth"
    assert default_task.ordinal(31) == "thirty-first"
    assert default_task.year_words(2024) == "two thousand twenty-four"
    assert default_task.year_words(1905) == "nineteen oh five"
    splits = default_task.generate_splits({"test": 300, "train": 3000})
    again = default_task.generate_splits({"test": 300, "train": 3000})
    assert splits == again
    mapping = {}
    for src, tgt in splits["test"] + splits["train"]:
        assert mapping.setdefault(src, tgt) == tgt
        assert len(src) <= 20 and len(tgt.split()) <= 12
    assert len(mapping) == 3300  # all sources distinct, so test is disjoint from train
    rng = random.Random(5)
    pairs = [default_task.sample_pair(rng) for _ in range(400)]
    assert any("." in s and t.startswith("the ") for s, t in pairs)  # DD.MM.YYYY
    assert any(s.startswith("$") and "dollar" in t for s, t in pairs)


# --- order, sharding, packing, state ----------------------------------------


def test_same_seed_same_order_other_seed_other_order(data_dir):
    a = _take(_iter(data_dir, seed=3), 3)
    b = _take(_iter(data_dir, seed=3), 3)
    c = _take(_iter(data_dir, seed=4), 3)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["src"], y["src"]) for x, y in zip(a, c))


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_are_disjoint_and_cover_the_split(data_dir, shuffle):
    tok = D.ByteTokenizer()
    seen = []
    for i in range(3):
        it = _iter(
            data_dir, split="test", shard_index=i, shard_count=3, repeat=False, shuffle=shuffle, batch_size=16
        )
        shard = [tok.decode(row) for b in it for row, seg in zip(b["src"], b["src_segment_ids"]) if seg.any()]
        seen.append(set(shard))
        assert len(shard) == len(set(shard))
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    full = {r["source"].decode() for r in D.open_source(NUMBERS, "test", data_dir=data_dir)}
    assert seen[0] | seen[1] | seen[2] == full


def test_packing_keeps_every_token_once(data_dir):
    kw = dict(split="test", repeat=False, batch_size=8, max_src_len=32, max_tgt_len=96)
    unpacked = _iter(data_dir, pack=False, **kw)
    expected = collections.Counter()
    for b in unpacked:
        for src, tgt_out, seg in zip(b["src"], b["tgt_out"], b["src_segment_ids"]):
            if seg.any():
                expected[(tuple(src[src > 0]), tuple(tgt_out[tgt_out > 0]))] += 1
    assert sum(expected.values()) == 200

    packed = _iter(data_dir, pack=True, **kw)
    got = collections.Counter()
    rows = 0
    for b in packed:
        assert b["src"].shape == (8, 32) and b["tgt_in"].shape == (8, 96)
        rows += int(b["src_segment_ids"].any(-1).sum())
        srcs = _segments(b["src"], b["src_segment_ids"], b["src_positions"])
        tins = _segments(b["tgt_in"], b["tgt_segment_ids"], b["tgt_positions"])
        touts = _segments(b["tgt_out"], b["tgt_segment_ids"], b["tgt_positions"])
        assert len(srcs) == len(tins) == len(touts)
        for src, tin, tout in zip(srcs, tins, touts):
            assert src[-1] == EOS_ID and tin[0] == BOS_ID and tout[-1] == EOS_ID
            np.testing.assert_array_equal(tin[1:], tout[:-1])  # shifted right
            got[(tuple(src), tuple(tout))] += 1
    assert got == expected
    assert rows < 200 / 2  # several examples per row


def test_lm_packing(data_dir):
    it = _iter(data_dir, text_keys=("target",), pack=True, max_tgt_len=128)
    assert it.layout == tasks.CausalLM("target")
    b = next(it)
    assert set(b) == {"inputs", "targets", "segment_ids", "positions"}
    ins = _segments(b["inputs"], b["segment_ids"], b["positions"])
    outs = _segments(b["targets"], b["segment_ids"], b["positions"])
    for i, o in zip(ins, outs):
        assert i[0] == BOS_ID and o[-1] == EOS_ID
        np.testing.assert_array_equal(i[1:], o[:-1])


@pytest.mark.parametrize("pack", [False, True])
def test_state_restores_the_same_examples(data_dir, pack):
    it = _iter(data_dir, pack=pack, seed=7)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint would hold
    expected = _take(it, 4)
    resumed = _iter(data_dir, pack=pack, seed=7)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 4)):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    other = _iter(data_dir, pack=pack, seed=8)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_eval_pass_has_fixed_shapes_and_padding_rows(data_dir):
    batches = list(_iter(data_dir, split="test", repeat=False, batch_size=64))
    assert len(batches) == 4 and all(b["src"].shape == (64, 24) for b in batches)
    assert int(sum(b["src_segment_ids"].any(-1).sum() for b in batches)) == 200
    assert not batches[-1]["src_segment_ids"][-1].any()
    pairs = list(D.eval_pairs(NUMBERS, "test", data_dir=data_dir))
    assert len(pairs) == 200 and all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)


# --- tfds mocks and errors ---------------------------------------------------


def test_wmt_style_translation_with_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        it = D.make_iterator(
            "wmt14_translate/de-en",
            "train",
            layout=tasks.lookup("wmt14_translate/de-en"),
            tokenizer=D.ByteTokenizer(),
            batch_size=4,
            max_src_len=32,
            max_tgt_len=32,
            pack=True,
            seed=0,
        )
        assert it.layout == tasks.Translation("de", "en")
        b = next(it)
        assert {k: v.shape for k, v in b.items()} == {
            "src": (4, 32),
            "src_segment_ids": (4, 32),
            "src_positions": (4, 32),
            "tgt_in": (4, 32),
            "tgt_out": (4, 32),
            "tgt_segment_ids": (4, 32),
            "tgt_positions": (4, 32),
        }
        assert all(v.dtype == np.int32 for v in b.values())
        assert len(list(D.eval_pairs("wmt14_translate/de-en", "test", ("de", "en"), max_examples=3))) == 3


def test_not_prepared_dataset_gives_a_clear_error(tmp_path):
    with pytest.raises(D.DatasetNotPreparedError, match="tfds build imdb_reviews") as e:
        _iter(tmp_path, task="imdb_reviews", max_src_len=64)
    assert "array_record" in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(ValueError, match="text_keys"):
        tasks.lookup("some_unknown_dataset")


# --- bad data ----------------------------------------------------------------


class TjaxTestBadText(tfds.core.GeneratorBasedBuilder):
    """Records with empty, over-long, invalid UTF-8 and unknown text."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({"src": tfds.features.Text(), "tgt": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        records = [
            ("", "hello"),  # empty source
            ("hello " * 40, "world"),  # too long
            (b"hello \xff world", "ok"),  # invalid UTF-8 -> U+FFFD, an unknown word
            ("hello snowman \u2603", ""),  # unknown words, empty target
            ("hello world", "ok"),
        ]
        for i, (s, t) in enumerate(records):
            yield i, {"src": s, "tgt": t}


@pytest.mark.parametrize("too_long", ["truncate", "filter"])
def test_bad_data_is_handled_and_counted(tmp_path, too_long):
    TjaxTestBadText(data_dir=tmp_path, file_format="array_record").download_and_prepare(
        file_format="array_record"
    )
    tok = D.WordTokenizer(["hello", "world", "ok"])
    it = D.make_iterator(
        "tjax_test_bad_text",
        "train",
        layout=tasks.Translation("src", "tgt"),
        tokenizer=tok,
        batch_size=8,
        max_src_len=16,
        max_tgt_len=8,
        pack=False,
        seed=0,
        repeat=False,
        data_dir=tmp_path,
        too_long=too_long,
    )
    (batch,) = list(it)
    kept = int(batch["src_segment_ids"].any(-1).sum())
    stats = it.stats.as_dict()
    assert stats["examples"] == 5 and stats["empty"] == 2 and stats["invalid_utf8"] == 1
    assert stats["unknown_tokens"] == 3  # U+FFFD, snowman, \u2603
    if too_long == "truncate":
        assert kept == 5 and stats["truncated"] == 1 and stats["filtered_too_long"] == 0
        assert batch["src_segment_ids"].sum(-1).max() == 16
    else:
        assert kept == 4 and stats["filtered_too_long"] == 1 and stats["truncated"] == 0


# --- ListOps -----------------------------------------------------------------


def test_listops_generator_is_reproducible_and_labels_match_evaluator(data_dir):
    a = list(listops.generate(40, seed=1, min_length=100, max_length=600))
    assert a == list(listops.generate(40, seed=1, min_length=100, max_length=600))
    assert a != list(listops.generate(40, seed=2, min_length=100, max_length=600))
    for text, label in a:
        assert 100 < len(text.split()) < 600 and set(text.split()) <= set(listops.VOCAB)
        assert listops.evaluate(text) == label
    for r in D.open_source(LISTOPS, "train", data_dir=data_dir):
        assert listops.evaluate(r["text"].decode()) == r["label"]
    # Hand-checked expressions (MED of an even count rounds down).
    assert listops.evaluate("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]") == 5
    assert listops.evaluate("[SM 9 9 [MED 1 2 ] ]") == 9
    assert listops.evaluate("( ( [MIN 7 ) 4 ] )") == 4  # LRA's parenthesised form
    for bad in ("[MAX 1 2", "[MIN ]", "1 2", "[FOO 1 ]"):
        with pytest.raises(ValueError):
            listops.evaluate(bad)


def test_listops_classification_batches(data_dir):
    tok = D.make_tokenizer("listops")
    it = _iter(data_dir, task=LISTOPS, tokenizer=tok, max_src_len=256, seed=1)
    b = next(it)
    assert set(b) == {"inputs", "segment_ids", "positions", "label"}
    assert b["inputs"].shape == (4, 256) and b["label"].shape == (4,)
    assert ((0 <= b["label"]) & (b["label"] < 10)).all()
    assert b["inputs"].max() < tok.vocab_size and it.stats.unknown_tokens == 0
    with pytest.raises(ValueError, match="pack=True"):
        _iter(data_dir, task=LISTOPS, tokenizer=tok, max_src_len=256, pack=True)


# --- tokenizers and metrics --------------------------------------------------


def test_byte_tokenizer_round_trip_and_invalid_utf8():
    tok = D.ByteTokenizer()
    rng = random.Random(0)
    for _ in range(20):
        text = "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(160, 0x2FFF)]))
            for _ in range(rng.randint(0, 30))
        )
        ids = tok.encode(text)
        assert all(4 <= i < 260 for i in ids)
        assert tok.decode([BOS_ID] + ids + [EOS_ID, 77, 0, 0]) == text
    assert tok.encode("") == [] and tok.vocab_size == 260
    assert tok.decode(tok.encode(b"a\xffb")) == "a\ufffdb" and tok.stats.invalid_utf8 == 1
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        D.make_tokenizer("wordpiece")


def test_sentencepiece_trains_once_and_is_reused(data_dir, tmp_path):
    kw = dict(workdir=tmp_path, vocab_size=96, data_dir=data_dir)
    tok = D.make_task_tokenizer("sentencepiece", NUMBERS, **kw)
    assert tok.trained and tok.vocab_size <= 96
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["tjax_numbers_tiny.spm96.model"]  # no temp file left behind
    again = D.make_task_tokenizer("sentencepiece", NUMBERS, **kw)
    assert not again.trained
    text = "the seventeenth of march two thousand twenty-four"
    ids = tok.encode(text)
    assert ids == again.encode(text) and UNK_ID not in ids and min(ids) >= 4
    assert again.decode(ids + [EOS_ID] + ids) == text
    assert tok.encode("\u2603").count(UNK_ID) >= 1 and tok.stats.unknown_tokens >= 1


def test_metrics():
    refs = ["four thousand fifty-two apples", "the first of may nineteen oh five"]
    bleu, sig = D.corpus_bleu(refs, refs)
    assert bleu == pytest.approx(100.0) and "tok:13a" in sig
    worse, _ = D.corpus_bleu(["four thousand apples", "the first of june"], refs)
    assert 0 < worse < 100
    chrf, sig = D.corpus_chrf(refs, refs)
    assert chrf == pytest.approx(100.0) and "nc:6" in sig
    assert D.exact_match(["a ", "b"], ["a", "c"]) == 0.5
    assert D.accuracy([1, 2, 3, 0], [1, 2, 0, 0], weights=[1, 1, 1, 0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="references"):
        D.corpus_bleu(["a"], [])
