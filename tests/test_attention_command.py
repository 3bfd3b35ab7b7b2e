"""`transformer-jax attention` end to end on the tiny BERT fixture (weights from
tests/fixtures/pretrained/bert, tokenizer from tests/fixtures/attention)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax import attention_view, cli

FIXTURES = Path(__file__).parent / "fixtures"
LM = str(Path(__file__).parents[1] / "configs" / "lm.py")
TINY_LM = ["--config.model.d_model=32", "--config.model.num_heads=2", "--config.model.d_ff=64",
           "--config.model.num_decoder_layers=1", "--config.model.vocab_size=320", "--config.model.max_len=48",
           "--config.data.vocab_size=300", "--config.data.max_tgt_len=32", "--config.batch_size=8",
           "--config.num_train_steps=2", "--config.eval_every=0", "--config.schedule.warmup_steps=1",
           "--config.test_at_end=False"]
TEXT = "The quick brown fox jumps over the lazy dog."
TOKENS = ["[CLS]", "the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", ".", "[SEP]"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    for f in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURES / "pretrained" / "bert" / f, d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "attention" / f, d)
    return d


def test_command_draws_png_and_writes_bertviz_json(bert_dir, tmp_path):
    png, js = tmp_path / "attn.png", tmp_path / "attn.json"
    assert cli.main(["attention", "--pretrained", str(bert_dir), "--text", TEXT, "--output", str(png),
                     "--json", str(js), "--layer", "1", "--head", "0,-1"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    params = json.loads(js.read_text())
    assert set(params) == {"attention", "default_filter", "root_div_id", "layer", "heads", "include_layers"}
    assert params["include_layers"] == [1] and params["layer"] == 1 and params["heads"] == [0, 3]
    (entry,) = params["attention"]
    assert entry["name"] is None and entry["left_text"] == TOKENS and entry["right_text"] == TOKENS
    attn = np.asarray(entry["attn"])  # [included layers, heads, T, S]
    assert attn.shape == (1, 4, len(TOKENS), len(TOKENS))
    model, variables = tj.from_pretrained(bert_dir)
    ids = np.asarray([tj.load_tokenizer(bert_dir).encode(TEXT)], np.int32)
    expected = tj.attention_weights(model, variables, ids, token_types=np.zeros_like(ids))[1][0]
    np.testing.assert_allclose(attn[0], np.asarray(expected), atol=1e-6)


def test_missing_matplotlib_is_a_named_error(bert_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(SystemExit, match=r"error: drawing attention needs matplotlib.*pip install"):
        cli.main(["attention", "--pretrained", str(bert_dir), "--text", TEXT, "--output", str(tmp_path / "a.png")])
    assert not (tmp_path / "a.png").exists()


def test_command_needs_an_output(bert_dir):
    with pytest.raises(SystemExit, match="error: give --output"):
        cli.main(["attention", "--pretrained", str(bert_dir), "--text", TEXT])


def test_indices_are_checked():
    assert attention_view.parse_indices(None, 3, "--layer") == [0, 1, 2]
    assert attention_view.parse_indices("2,-3", 3, "--layer") == [2, 0]
    with pytest.raises(ValueError, match=r"--head='4': index 4 is out of range; the model has 4"):
        attention_view.parse_indices("4", 4, "--head")
    with pytest.raises(ValueError, match="'x' is not an integer"):
        attention_view.parse_indices("1,x", 4, "--layer")


def test_command_reads_a_training_workdir(tmp_path):
    """A causal LM trained for two steps: the JSON has one entry, BOS first, causal (upper triangle 0)."""
    workdir = str(tmp_path / "lm")
    assert cli.main(["train", "--config", LM, "--workdir", workdir, f"--config.data.data_dir={tmp_path / 'tfds'}",
                     *TINY_LM]) == 0
    js = tmp_path / "attn.json"
    assert cli.main(["attention", "--workdir", workdir, "--text", "the cat sat", "--json", str(js)]) == 0
    (entry,) = json.loads(js.read_text())["attention"]
    attn = np.asarray(entry["attn"])
    assert entry["left_text"][0] == "<s>" and attn.shape[:2] == (1, 2) and attn.shape[2] == len(entry["left_text"])
    assert not attn[..., np.triu(np.ones(attn.shape[2:], bool), 1)].any()
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
