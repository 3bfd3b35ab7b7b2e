"""`transformer-jax export`: a LoRA fine-tune of a tiny BERT checkpoint -> a Hugging Face directory
(LoRA merged: the classifier's architecture, the task's labels, the kept tokenizer, the workdir's
outputs) and PEFT adapters (whose B @ A, scaled, is exactly what the merged export added).
check_export.py (fixture venv) loads such exports with the reference library and peft."""

import json
import os
import random

import numpy as np
import pytest
from safetensors.numpy import load_file

import transformer_jax as tj
from transformer_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "tests", "fixtures", "pretrained", "heads", "bert", "masked_lm")
WORDS = "the quick brown fox jumps over lazy dog a small model reads text".split()


def _jsonl(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            label = rng.random() < 0.5
            words = rng.sample(WORDS, 4) + ["good" if label else "bad"]
            f.write(json.dumps({"sentence1": " ".join(words), "label": "pos" if label else "neg"}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    work = str(tmp / "run")
    train, valid = _jsonl(tmp / "train.jsonl", 32, 0), _jsonl(tmp / "valid.jsonl", 8, 1)
    code = cli.main(["train", "--config", os.path.join(ROOT, "configs", "finetune_classification.py"),
                     "--workdir", work, f"--config.init_from={BASE}", f"--config.data.train_files={train}",
                     f"--config.data.validation_files={valid}", f"--config.data.test_files={valid}", "--config.num_epochs=1", "--config.data.max_src_len=12",
                     "--config.mesh.data=-1", "--config.lora.rank=2", "--config.lora.alpha=4.0",
                     "--config.optimizer.learning_rate=5e-2"])
    assert code == 0
    return work


@pytest.fixture(scope="module")
def exports(workdir, tmp_path_factory):
    """(merged directory, PEFT adapters directory) exported from the workdir."""
    tmp = tmp_path_factory.mktemp("exports")
    merged, adapters = tmp / "hf", tmp / "peft"
    assert cli.main(["export", "--workdir", workdir, "--output", str(merged)]) == 0
    assert cli.main(["export", "--workdir", workdir, "--output", str(adapters), "--adapters"]) == 0
    return merged, adapters


def test_export_merged_is_the_workdirs_model(workdir, exports):
    from transformer_jax.train.build import load_config
    from transformer_jax.train.loop import restore_for_eval

    out = exports[0]
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == ["BertForSequenceClassification"]
    assert sorted(hf["id2label"].values()) == ["neg", "pos"]
    assert (out / "tokenizer.json").exists()
    model, variables = tj.from_pretrained(out)
    s, state, _ = restore_for_eval(load_config(workdir), workdir)
    ids = np.random.default_rng(0).integers(5, 100, size=(2, 10)).astype(np.int32)
    want = np.asarray(s.model.apply({"params": s.eval_params(state)}, ids))
    got = np.asarray(model.apply(variables, ids))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_export_adapters_in_peft_layout(exports):
    merged, adapters = exports
    config = json.loads((adapters / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS" and config["r"] == 2
    assert config["base_model_name_or_path"] == BASE and "classifier" in config["modules_to_save"]
    lora = load_file(adapters / "adapter_model.safetensors")
    base, out = load_file(os.path.join(BASE, "model.safetensors")), load_file(merged / "model.safetensors")
    module = "bert.encoder.layer.1.attention.self.query"
    assert module in config["target_modules"]
    a, b = lora[f"base_model.model.{module}.lora_A.weight"], lora[f"base_model.model.{module}.lora_B.weight"]
    assert a.shape == (2, 16) and b.shape == (16, 2) and np.abs(b).max() > 0  # trained
    np.testing.assert_allclose(out[f"{module}.weight"], base[f"{module}.weight"] + 2.0 * b @ a, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lora["base_model.model.classifier.weight"], out["classifier.weight"])


def test_export_errors_are_named(workdir, tmp_path):
    with pytest.raises(SystemExit, match="export needs --output"):
        cli.main(["export", "--workdir", workdir])
