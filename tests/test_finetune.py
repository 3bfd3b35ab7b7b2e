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


def _checkpoint(tmp_path, model: str, tokenizer: str):
    """A model directory: a tiny checkpoint of tests/fixtures/pretrained with a tokenizer of
    tests/fixtures/tokenizers (its ids fit the checkpoint's vocabulary)."""
    out = tmp_path / f"{model}_{tokenizer}"
    out.mkdir()
    for d, names in ((os.path.join(FIXTURES, "pretrained", model), ("config.json", "model.safetensors",
                                                                    "generation_config.json")),
                     (os.path.join(FIXTURES, "tokenizers", tokenizer), None)):
        for name in names or os.listdir(d):
            if os.path.isfile(os.path.join(d, name)) and not name.startswith("reference"):
                shutil.copyfile(os.path.join(d, name), out / name)
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
        words = rng.sample(FILLER, 4) + [rng.choice(GOOD if label else BAD)]
        rng.shuffle(words)
        pair = " ".join(rng.sample(FILLER, 3))
        out.append({"sentence1": " ".join(words), "sentence2": pair, "label": "positive" if label else "negative"})
    return out


def test_sequence_classification_of_pairs_trains_evaluates_and_predicts(tmp_path):
    ckpt = _checkpoint(tmp_path, "bert_mlm", "bert")
    rng = random.Random(0)
    files = {split: _jsonl(tmp_path / f"{split}.jsonl", _sentiment(rng, n))
             for split, n in (("train", 96), ("validation", 32), ("test", 32))}
    work = str(tmp_path / "run")
    _run("train", "--config", os.path.join(ROOT, "configs", "finetune_classification.py"), "--workdir", work,
         f"--config.init_from={ckpt}", f"--config.data.train_files={files['train']}",
         f"--config.data.validation_files={files['validation']}", f"--config.data.test_files={files['test']}",
         "--config.num_epochs=6", "--config.optimizer.learning_rate=2e-3", "--config.data.max_src_len=24",
         "--config.mesh.data=1")
    assert sorted(os.listdir(os.path.join(work, "tokenizer"))) >= ["tokenizer.json"]  # the checkpoint's, kept
    _run("eval", "--workdir", work)
    test = json.load(open(os.path.join(work, "eval.json")))["test"]
    assert {"accuracy", "f1"} <= set(test) and test["examples"] == 32
    assert test["accuracy"] >= 0.8, test  # one word decides the label: learnable in a few epochs
    out = str(tmp_path / "out.jsonl")
    _run("predict", "--workdir", work, "--input", files["test"], "--output", out)
    lines = [json.loads(x) for x in open(out)]
    assert len(lines) == 32 and set(lines[0]["scores"]) == {"negative", "positive"}
    assert lines[0]["label"] == max(lines[0]["scores"], key=lines[0]["scores"].get)
    np.testing.assert_allclose(sum(lines[0]["scores"].values()), 1.0, rtol=1e-5)


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
