"""Fine-tuning tasks end to end from the command line (transformer_jax/tasks/, configs/finetune_*.py):
a tiny reference-library checkpoint with its tokenizer, the user's JSONL files -> train -> eval.json
with the task's metrics -> predict; and the checkpoint deciding the architecture (named errors on
any contradiction, never a silent mismatch)."""

import json
import os
import random
import runpy
import shutil

import numpy as np
import pytest

from transformer_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def _checkpoint(tmp_path, model: str, tokenizer: str | None = None, scale: float = 1.0):
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


def test_sequence_classification_of_pairs_trains_evaluates_and_predicts(tmp_path):
    ckpt = _checkpoint(tmp_path, "bert_mlm", "bert", scale=0.1)
    rng = random.Random(0)
    files = {split: _jsonl(tmp_path / f"{split}.jsonl", _sentiment(rng, n))
             for split, n in (("train", 96), ("validation", 32), ("test", 32))}
    work = str(tmp_path / "run")
    _run("train", "--config", os.path.join(ROOT, "configs", "finetune_classification.py"), "--workdir", work,
         f"--config.init_from={ckpt}", f"--config.data.train_files={files['train']}",
         f"--config.data.validation_files={files['validation']}", f"--config.data.test_files={files['test']}",
         "--config.num_epochs=10", "--config.optimizer.learning_rate=5e-3", "--config.data.max_src_len=24")
    assert "tokenizer.json" in os.listdir(os.path.join(work, "tokenizer"))  # the checkpoint's, kept
    _run("eval", "--workdir", work)
    test = json.load(open(os.path.join(work, "eval.json")))["test"]
    assert {"accuracy", "f1"} <= set(test) and test["examples"] == 32
    assert test["accuracy"] >= 0.9, test  # one word decides the label (chance: 0.5)
    out = str(tmp_path / "out.jsonl")
    _run("predict", "--workdir", work, "--input", files["test"], "--output", out)
    lines = [json.loads(x) for x in open(out)]
    assert len(lines) == 32 and set(lines[0]["scores"]) == {"negative", "positive"}
    assert lines[0]["label"] == max(lines[0]["scores"], key=lines[0]["scores"].get)
    np.testing.assert_allclose(sum(lines[0]["scores"].values()), 1.0, rtol=1e-5)
    _run("export", "--workdir", work, "--output", str(tmp_path / "export"))  # the string labels kept
    exported = json.load(open(tmp_path / "export" / "config.json"))
    assert exported["id2label"] == {"0": "negative", "1": "positive"}
    assert exported["architectures"] == ["BertForSequenceClassification"]


def test_an_experiment_config_contradicting_the_checkpoint_is_a_named_error(tmp_path):
    """The issue's silent path: a pre-LN, mean-pooling experiment config started from BERT."""
    from transformer_jax.train import loop

    ckpt = _checkpoint(tmp_path, "bert_mlm", "bert")
    c = runpy.run_path(os.path.join(ROOT, "configs", "text_classifier.py"))["get_config"]()
    c.init_from, c.data.dataset = ckpt, "synthetic"
    c.model.update(norm_position="pre", d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2, vocab_size=500)
    with pytest.raises(ValueError, match=r"config.init_from=.* decides the architecture .*config.json.*"
                                         r"config.model.norm_position='pre', but the checkpoint has 'post'"):
        loop.train(c, str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run")


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


def test_token_classification_trains_scores_entities_and_predicts_character_spans(tmp_path):
    ckpt = _checkpoint(tmp_path, "bert", "bert", scale=0.1)  # a bare BertModel: the token-classification head starts fresh
    rng = random.Random(1)
    files = {split: _jsonl(tmp_path / f"{split}.jsonl", _ner(rng, n))
             for split, n in (("train", 96), ("validation", 16), ("test", 32))}
    work = str(tmp_path / "run")
    _run("train", "--config", os.path.join(ROOT, "configs", "finetune_ner.py"), "--workdir", work,
         f"--config.init_from={ckpt}", f"--config.data.train_files={files['train']}",
         f"--config.data.validation_files={files['validation']}", f"--config.data.test_files={files['test']}",
         "--config.num_epochs=4", "--config.optimizer.learning_rate=5e-3", "--config.data.max_src_len=16")
    assert json.load(open(os.path.join(work, "init_from.json")))["fresh"] == ["classifier/bias", "classifier/kernel"]
    _run("eval", "--workdir", work)
    test = json.load(open(os.path.join(work, "eval.json")))["test"]
    assert {"precision", "recall", "f1"} <= set(test) and test["examples"] == 32
    assert test["f1"] >= 0.5, test  # the entities are fixed words
    # predict's tags on the test words give eval's seqeval scores (one path, not two)
    from transformer_jax.data import metrics

    records = [json.loads(x) for x in open(files["test"])]
    _run("predict", "--workdir", work, "--input", files["test"], "--output", str(tmp_path / "tags.jsonl"))
    predicted = [json.loads(x)["tags"] for x in open(tmp_path / "tags.jsonl")]
    assert [len(p) for p in predicted] == [len(r["tokens"]) for r in records]
    np.testing.assert_allclose(metrics.entity_scores([r["ner_tags"] for r in records], predicted)["f1"], test["f1"])
    inputs = _jsonl(tmp_path / "in.jsonl", [{"text": "the  dog paul  read in sao paulo"}])
    out = str(tmp_path / "out.jsonl")
    _run("predict", "--workdir", work, "--input", inputs, "--output", out)
    (line,) = [json.loads(x) for x in open(out)]
    text = "the  dog paul  read in sao paulo"
    for e in line["entities"]:  # character offsets into the input text, whitespace runs included
        assert text[e["start"]:e["end"]] == e["text"] and e["entity"] in ("PER", "LOC")


def _qa(rng, n):
    out = []
    for i in range(n):
        who = rng.choice(("paul", "bert", "fox", "dog"))
        words = rng.sample(FILLER, 4)
        context = " ".join(words[:2] + ["written", "by", who] + words[2:])
        out.append({"id": str(i), "question": "who wrote the book", "context": context,
                    "answers": {"text": [who], "answer_start": [context.index(" by ") + 4]}})
    return out


def test_question_answering_trains_with_windows_and_scores_squad(tmp_path):
    ckpt = _checkpoint(tmp_path, "bert", "bert", scale=0.1)
    rng = random.Random(2)
    files = {split: _jsonl(tmp_path / f"{split}.jsonl", _qa(rng, n))
             for split, n in (("train", 96), ("validation", 16), ("test", 24))}
    work = str(tmp_path / "run")
    _run("train", "--config", os.path.join(ROOT, "configs", "finetune_qa.py"), "--workdir", work,
         f"--config.init_from={ckpt}", f"--config.data.train_files={files['train']}",
         f"--config.data.validation_files={files['validation']}", f"--config.data.test_files={files['test']}",
         "--config.num_epochs=4", "--config.optimizer.learning_rate=5e-3", "--config.data.max_src_len=12",
         "--config.data.doc_stride=4")  # contexts of ~10 tokens: two or three windows each
    _run("eval", "--workdir", work)
    test = json.load(open(os.path.join(work, "eval.json")))["test"]
    assert {"exact_match", "f1"} <= set(test) and test["examples"] == 24
    out = str(tmp_path / "out.jsonl")
    _run("predict", "--workdir", work, "--input", files["test"], "--output", out)
    records = [json.loads(x) for x in open(files["test"])]
    lines = [json.loads(x) for x in open(out)]
    for r, line in zip(records, lines):
        assert r["context"][line["start"]:line["end"]] == line["answer"] and line["answer"]
    from transformer_jax.data import metrics

    scores = metrics.squad([x["answer"] for x in lines], [r["answers"]["text"] for r in records])
    np.testing.assert_allclose([scores["exact_match"], scores["f1"]], [test["exact_match"], test["f1"]])


def _summaries(rng, n):
    out = []
    for _ in range(n):
        words = rng.sample(FILLER, 5)
        out.append({"document": " ".join(words), "summary": " ".join(words[:2])})
    return out


def test_seq2seq_from_t5_reports_rouge_and_bleu_and_generates(tmp_path):
    ckpt = _checkpoint(tmp_path, "t5")
    rng = random.Random(3)
    files = {split: _jsonl(tmp_path / f"{split}.jsonl", _summaries(rng, n))
             for split, n in (("train", 32), ("validation", 8), ("test", 8))}
    work = str(tmp_path / "run")
    _run("train", "--config", os.path.join(ROOT, "configs", "finetune_seq2seq.py"), "--workdir", work,
         f"--config.init_from={ckpt}", f"--config.data.train_files={files['train']}",
         f"--config.data.validation_files={files['validation']}", f"--config.data.test_files={files['test']}",
         "--config.num_epochs=2", "--config.data.max_src_len=24", "--config.data.max_tgt_len=12",
         "--config.data.prefix=summarize: ", "--config.decode.max_len=6")
    _run("eval", "--workdir", work)
    test = json.load(open(os.path.join(work, "eval.json")))["test"]
    assert {"rouge1", "rouge2", "rougeL", "bleu"} <= set(test) and test["examples"] == 8
    assert all(0.0 <= test[k] <= 100.0 for k in ("rouge1", "rouge2", "rougeL", "bleu"))
    out = str(tmp_path / "out.jsonl")
    _run("predict", "--workdir", work, "--input", files["test"], "--output", out)
    lines = [json.loads(x) for x in open(out)]
    assert len(lines) == 8 and all(isinstance(x["generated"], str) for x in lines)
    hyps = [x["generated"] for x in lines]
    assert [s["hypothesis"] for s in test["samples"]] == hyps[:5]  # eval and predict generate alike


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


def test_causal_lm_fine_tuning_from_gpt2_on_prompt_response_files(tmp_path):
    ckpt = _checkpoint(tmp_path, "gpt2")
    rng = random.Random(4)
    rows = [{"prompt": " ".join(rng.sample(FILLER, 3)), "response": rng.choice(FILLER)} for _ in range(40)]
    files = {split: _jsonl(tmp_path / f"{split}.jsonl", rows[a:b])
             for split, (a, b) in (("train", (0, 32)), ("validation", (32, 36)), ("test", (36, 40)))}
    work = str(tmp_path / "run")
    _run("train", "--config", os.path.join(ROOT, "configs", "finetune_lm.py"), "--workdir", work,
         f"--config.init_from={ckpt}", f"--config.data.train_files={files['train']}",
         f"--config.data.validation_files={files['validation']}", f"--config.data.test_files={files['test']}",
         "--config.num_epochs=2", "--config.data.max_tgt_len=16", "--config.decode.max_len=4")
    _run("eval", "--workdir", work)
    result = json.load(open(os.path.join(work, "eval.json")))
    assert np.isfinite(result["test"]["perplexity"]) and result["test"]["perplexity"] > 1.0
    out = str(tmp_path / "out.jsonl")
    _run("predict", "--workdir", work, "--input", files["test"], "--output", out)
    assert [set(json.loads(x)) for x in open(out)] == [{"generated"}] * 4


def test_a_bad_row_is_an_error_naming_the_file_and_line_before_anything_is_built(tmp_path):
    ckpt = _checkpoint(tmp_path, "bert_mlm", "bert")
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "good dog", "label": "positive"}, {"text": "lazy fox"}])
    work = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"error: .*train.jsonl, line 2.*label"):
        cli.main(["train", "--config", os.path.join(ROOT, "configs", "finetune_classification.py"), "--workdir",
                  str(work), f"--config.init_from={ckpt}", f"--config.data.train_files={train}",
                  f"--config.data.validation_files={train}", f"--config.data.test_files={train}"])
    assert not work.exists()
