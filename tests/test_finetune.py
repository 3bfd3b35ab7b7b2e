"""Fine-tuning tasks end to end from the command line (transformer_jax/tasks/, configs/finetune_*.py):
a tiny reference-library checkpoint with its tokenizer, the user's JSONL files -> train -> eval.json
with the task's metrics -> predict -> export (the head and labels the reference library reads); and
the checkpoint deciding the architecture (named errors on any contradiction, never a silent mismatch).

Each task trains once (a module fixture); its tests read that workdir."""

import json
import os
import random
import runpy
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from transformer_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def _checkpoint(tmp_path, model: str, tokenizer: str | None = None, scale: float = 1.0) -> str:
    """A model directory: a tiny checkpoint of tests/fixtures/pretrained (with its tokenizer files, or
    those of tests/fixtures/tokenizers/<tokenizer>, whose ids fit the checkpoint's vocabulary).

    `scale` multiplies its matrices: the fixtures are drawn with std 0.3, which saturates attention
    (a [CLS] token then attends to one arbitrary token and learns slowly); 0.1 makes it std 0.03, near
    a trained BERT's, so a few epochs learn the tests' one-word rules."""
    out = tmp_path / f"{model}_{tokenizer}"
    out.mkdir()
    for d in (os.path.join(FIXTURES, "pretrained", model), *([os.path.join(FIXTURES, "tokenizers", tokenizer)]
                                                             if tokenizer else [])):
        for name in os.listdir(d):
            if os.path.isfile(os.path.join(d, name)) and not name.startswith("reference"):
                shutil.copyfile(os.path.join(d, name), out / name)
    if scale != 1.0:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(out / "model.safetensors"))
        save_file({k: v * scale if v.ndim >= 2 else v for k, v in tensors.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
    return str(out)


def _jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _run(*argv):
    code = cli.main(list(argv))
    assert code == 0


def _train(root, name: str, config: str, ckpt: str, records: dict[str, list], *flags) -> SimpleNamespace:
    """`train` of configs/<config> from `ckpt` on `records` (split -> rows, written as JSONL files);
    the workdir, the files and eval.json (the test split, scored at the end of training)."""
    files = {split: _jsonl(root / f"{name}_{split}.jsonl", rows) for split, rows in records.items()}
    work = str(root / name)
    _run("train", "--config", os.path.join(ROOT, "configs", config), "--workdir", work, f"--config.init_from={ckpt}",
         f"--config.data.train_files={files['train']}", f"--config.data.validation_files={files['validation']}",
         f"--config.data.test_files={files['test']}", *flags)
    result = json.load(open(os.path.join(work, "eval.json")))
    assert result["split"] == "test"
    return SimpleNamespace(work=work, files=files, ckpt=ckpt, test=result)


def _predict(run, root, inputs: str | None = None) -> list[dict]:
    out = str(root / f"{os.path.basename(run.work)}_predictions.jsonl")
    _run("predict", "--workdir", run.work, "--input", inputs or run.files["test"], "--output", out)
    return [json.loads(x) for x in open(out)]


def _export(run, root, architecture: str, head: str, id2label=None):
    """`export`: config.json names the reference library's class (and the labels); our loader reads it
    back under that head with the workdir's parameters."""
    import jax
    from flax.traverse_util import flatten_dict

    import transformer_jax as tj
    from transformer_jax.checkpoint import Checkpointer

    out = root / f"{os.path.basename(run.work)}_export"
    _run("export", "--workdir", run.work, "--output", str(out))
    hf = json.load(open(out / "config.json"))
    assert hf["architectures"] == [architecture]
    if id2label is not None:
        assert hf["id2label"] == {str(i): n for i, n in enumerate(id2label)}
    _, variables = tj.from_pretrained(str(out), head=head)
    got = variables["params"]
    with Checkpointer(os.path.join(run.work, "checkpoints")) as ckpt:  # the same tree, read from the checkpoint
        saved, _ = ckpt.restore_params(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), got))
    flat_got, flat_saved = flatten_dict(dict(got)), flatten_dict(dict(saved))
    assert set(flat_got) == set(flat_saved)
    for k, v in flat_saved.items():
        np.testing.assert_allclose(np.asarray(flat_got[k]), np.asarray(v), rtol=1e-6, atol=1e-7, err_msg=str(k))


GOOD, BAD = ("good", "loved", "fast", "quick"), ("lazy", "rare", "old", "small")
FILLER = "the dog river book model student town music fox text corpus".split()


def _sentiment(rng, n):
    out = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = rng.sample(FILLER, 2) + [rng.choice(GOOD if label else BAD)]
        rng.shuffle(words)
        pair = rng.choice(FILLER)
        out.append({"sentence1": " ".join(words), "sentence2": pair, "label": "positive" if label else "negative"})
    return out


PEOPLE, PLACES = ("paul", "bert"), (("sao", "paulo"), ("zurich",), ("town",))


def _ner(rng, n):
    out = []
    for _ in range(n):
        words, tags = rng.sample(FILLER, 3), ["O"] * 3
        at = rng.randrange(4)
        entity = [rng.choice(PEOPLE)] if rng.random() < 0.5 else list(rng.choice(PLACES))
        kind = "PER" if entity[0] in PEOPLE else "LOC"
        words[at:at] = entity
        tags[at:at] = [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
        out.append({"tokens": words, "ner_tags": tags})
    return out


def _qa(rng, n):
    out = []
    for i in range(n):
        who = rng.choice(("paul", "bert", "fox", "dog"))
        words = rng.sample(FILLER, 4)
        context = " ".join(words[:2] + ["written", "by", who] + words[2:])
        out.append({"id": str(i), "question": "who wrote the book", "context": context,
                    "answers": {"text": [who], "answer_start": [context.index(" by ") + 4]}})
    return out


def _summaries(rng, n):
    out = []
    for _ in range(n):
        words = rng.sample(FILLER, 5)
        out.append({"document": " ".join(words), "summary": " ".join(words[:2])})
    return out




def _splits(make, seed: int, **sizes) -> dict[str, list]:
    rng = random.Random(seed)
    return {split: make(rng, n) for split, n in sizes.items()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def bert_mlm(root):
    return _checkpoint(root, "bert_mlm", "bert", scale=0.1)


@pytest.fixture(scope="module")
def bert(root):  # a bare BertModel: the task heads start fresh
    return _checkpoint(root, "bert", "bert", scale=0.1)


# ---- sequence classification of pairs


@pytest.fixture(scope="module")
def pairs(root, bert_mlm):
    return _train(root, "pairs", "finetune_classification.py", bert_mlm,
                  _splits(_sentiment, 0, train=96, validation=32, test=32),
                  "--config.num_epochs=10", "--config.optimizer.learning_rate=5e-3", "--config.data.max_src_len=24")


def test_pairs_train_keeps_the_checkpoints_tokenizer_and_scores_accuracy(pairs):
    assert "tokenizer.json" in os.listdir(os.path.join(pairs.work, "tokenizer"))
    assert {"accuracy", "f1"} <= set(pairs.test) and pairs.test["examples"] == 32
    assert pairs.test["accuracy"] >= 0.9, pairs.test  # one word decides the label (chance: 0.5)


def test_the_eval_command_scores_the_test_split_as_train_did(pairs):
    _run("eval", "--workdir", pairs.work)
    test = json.load(open(os.path.join(pairs.work, "eval.json")))["test"]
    np.testing.assert_allclose([test["accuracy"], test["f1"]], [pairs.test["accuracy"], pairs.test["f1"]])


def test_pairs_predict_gives_the_label_and_its_scores(pairs, root):
    lines = _predict(pairs, root)
    assert len(lines) == 32 and set(lines[0]["scores"]) == {"negative", "positive"}
    assert lines[0]["label"] == max(lines[0]["scores"], key=lines[0]["scores"].get)
    np.testing.assert_allclose(sum(lines[0]["scores"].values()), 1.0, rtol=1e-5)


def test_pairs_export_keeps_the_string_labels(pairs, root):
    _export(pairs, root, "BertForSequenceClassification", "sequence_classification", ["negative", "positive"])


def test_an_experiment_config_contradicting_the_checkpoint_is_a_named_error(tmp_path, bert_mlm):
    """The issue's silent path: a pre-LN, mean-pooling experiment config started from BERT."""
    from transformer_jax.train import loop

    c = runpy.run_path(os.path.join(ROOT, "configs", "text_classifier.py"))["get_config"]()
    c.init_from, c.data.dataset = bert_mlm, "synthetic"
    c.model.update(norm_position="pre", d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2, vocab_size=500)
    with pytest.raises(ValueError, match=r"config.init_from=.* decides the architecture .*config.json.*"
                                         r"config.model.norm_position='pre', but the checkpoint has 'post'"):
        loop.train(c, str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run")


def test_a_restored_workdir_reads_its_own_copy_not_the_init_from_directory(pairs, root):
    """eval, predict and export build from what the workdir kept (its decided architecture, tokenizer
    and labels): they work with the checkpoint directory gone."""
    moved = shutil.move(pairs.ckpt, str(root / "moved_away"))
    try:
        lines = _predict(pairs, root)
    finally:
        shutil.move(moved, pairs.ckpt)
    assert len(lines) == 32 and all(line["label"] in ("negative", "positive") for line in lines)


# ---- token classification


@pytest.fixture(scope="module")
def ner(root, bert):
    return _train(root, "ner", "finetune_ner.py", bert, _splits(_ner, 1, train=96, validation=16, test=32),
                  "--config.num_epochs=4", "--config.optimizer.learning_rate=5e-3", "--config.data.max_src_len=16")


def test_ner_starts_a_fresh_head_and_scores_entities(ner):
    assert json.load(open(os.path.join(ner.work, "init_from.json")))["fresh"] == ["classifier/bias", "classifier/kernel"]
    assert {"precision", "recall", "f1"} <= set(ner.test) and ner.test["examples"] == 32
    assert ner.test["f1"] >= 0.5, ner.test  # the entities are fixed words


def test_ner_predicted_tags_give_the_eval_scores(ner, root):
    """predict's tags on the test words give eval's seqeval scores (one path, not two)."""
    from transformer_jax.data import metrics

    records = [json.loads(x) for x in open(ner.files["test"])]
    predicted = [line["tags"] for line in _predict(ner, root)]
    assert [len(p) for p in predicted] == [len(r["tokens"]) for r in records]
    np.testing.assert_allclose(metrics.entity_scores([r["ner_tags"] for r in records], predicted)["f1"], ner.test["f1"])


def test_ner_predict_gives_character_spans_of_the_input_text(ner, root):
    text = "the  dog paul  read in sao paulo"
    (line,) = _predict(ner, root, _jsonl(root / "ner_text.jsonl", [{"text": text}]))
    for e in line["entities"]:  # character offsets into the input text, whitespace runs included
        assert text[e["start"]:e["end"]] == e["text"] and e["entity"] in ("PER", "LOC")


def test_ner_export_is_a_token_classifier_with_the_tags(ner, root):
    tags = json.load(open(os.path.join(ner.work, "config.json")))["data"]["labels"]
    _export(ner, root, "BertForTokenClassification", "token_classification", tags)


# ---- extractive question answering


@pytest.fixture(scope="module")
def qa(root, bert):  # contexts of ~10 tokens in windows of 12 with stride 4: two or three windows each
    return _train(root, "qa", "finetune_qa.py", bert, _splits(_qa, 2, train=96, validation=16, test=24),
                  "--config.num_epochs=4", "--config.optimizer.learning_rate=5e-3", "--config.data.max_src_len=12",
                  "--config.data.doc_stride=4")


def test_qa_predict_answers_are_spans_of_the_context_and_give_the_eval_scores(qa, root):
    from transformer_jax.data import metrics

    assert {"exact_match", "f1"} <= set(qa.test) and qa.test["examples"] == 24
    records = [json.loads(x) for x in open(qa.files["test"])]
    lines = _predict(qa, root)
    for r, line in zip(records, lines):
        assert r["context"][line["start"]:line["end"]] == line["answer"] and line["answer"]
    scores = metrics.squad([x["answer"] for x in lines], [r["answers"]["text"] for r in records])
    np.testing.assert_allclose([scores["exact_match"], scores["f1"]], [qa.test["exact_match"], qa.test["f1"]])


def test_qa_export_is_a_question_answering_model(qa, root):
    """The source (a bare BertModel) had three labels; a QA head has two outputs (start, end), and the
    reference library sizes it by num_labels."""
    _export(qa, root, "BertForQuestionAnswering", "question_answering", ["LABEL_0", "LABEL_1"])


# ---- seq2seq


@pytest.fixture(scope="module")
def seq2seq(root):
    return _train(root, "seq2seq", "finetune_seq2seq.py", _checkpoint(root, "t5"),
                  _splits(_summaries, 3, train=32, validation=8, test=8),
                  "--config.num_epochs=2", "--config.data.max_src_len=24", "--config.data.max_tgt_len=12",
                  "--config.data.prefix=summarize: ", "--config.decode.max_len=6")


def test_seq2seq_from_t5_reports_rouge_and_bleu_and_generates_as_eval(seq2seq, root):
    test = seq2seq.test
    assert {"rouge1", "rouge2", "rougeL", "bleu"} <= set(test) and test["examples"] == 8
    assert all(0.0 <= test[k] <= 100.0 for k in ("rouge1", "rouge2", "rougeL", "bleu"))
    hyps = [line["generated"] for line in _predict(seq2seq, root)]
    assert len(hyps) == 8 and all(isinstance(h, str) for h in hyps)
    assert [s["hypothesis"] for s in test["samples"]] == hyps[:5]  # eval and predict generate alike


def test_seq2seq_export_is_a_t5_for_conditional_generation(seq2seq, root):
    _export(seq2seq, root, "T5ForConditionalGeneration", "seq2seq")


# ---- causal LM


def test_prompt_response_rows_carry_the_loss_on_the_response_only():
    from transformer_jax import tasks
    from transformer_jax.data.pipeline import Featurizer
    from transformer_jax.data.stats import DataStats
    from transformer_jax.pretrained import load_generation_config, load_tokenizer

    d = os.path.join(FIXTURES, "pretrained", "gpt2")
    tok, gen = load_tokenizer(d), load_generation_config(d)
    task = tasks.FINETUNE["causal_lm"](generation=gen)
    ex = Featurizer(task, tok, 16, 16, "truncate", DataStats())({"prompt": "the dog", "response": "a fox"})
    prompt, response = tok.encode("the dog"), tok.encode("a fox") + [gen.eos_ids[0]]
    seq = prompt + response
    np.testing.assert_array_equal(ex["inputs"], seq[:-1])
    np.testing.assert_array_equal(ex["targets"], seq[1:])
    np.testing.assert_array_equal(ex["weights"], [0.0] * (len(prompt) - 1) + [1.0] * len(response))


@pytest.fixture(scope="module")
def lm(root):
    rng = random.Random(4)
    rows = [{"prompt": " ".join(rng.sample(FILLER, 3)), "response": rng.choice(FILLER)} for _ in range(40)]
    return _train(root, "lm", "finetune_lm.py", _checkpoint(root, "gpt2"),
                  {"train": rows[:32], "validation": rows[32:36], "test": rows[36:]},
                  "--config.num_epochs=2", "--config.data.max_tgt_len=16", "--config.decode.max_len=4")


def test_causal_lm_fine_tuning_from_gpt2_scores_perplexity_and_generates(lm, root):
    assert np.isfinite(lm.test["perplexity"]) and lm.test["perplexity"] > 1.0
    assert [set(line) for line in _predict(lm, root)] == [{"generated"}] * 4


def test_causal_lm_export_is_a_gpt2_lm_head_model(lm, root):
    _export(lm, root, "GPT2LMHeadModel", "causal_lm")


def test_a_bad_row_is_an_error_naming_the_file_and_line_before_anything_is_built(tmp_path, bert_mlm):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "good dog", "label": "positive"}, {"text": "lazy fox"}])
    work = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"error: .*train.jsonl, line 2.*label"):
        cli.main(["train", "--config", os.path.join(ROOT, "configs", "finetune_classification.py"), "--workdir",
                  str(work), f"--config.init_from={bert_mlm}", f"--config.data.train_files={train}",
                  f"--config.data.validation_files={train}", f"--config.data.test_files={train}"])
    assert not work.exists()
