"""Broken files on the command line (issue 24, items 10 and 11): each is one `error:` line naming the
file (and line or field), a non-zero exit, no traceback, and nothing written."""

import io
import os
import subprocess
import sys

import pytest

from transformer_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
GPT2 = os.path.join(REPO, "tests", "fixtures", "pretrained", "gpt2")


def _one_error(exc, capsys) -> str:
    message = exc.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert len(message.splitlines()) == 1, message
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return message


@pytest.mark.parametrize("text, where", [("def get_config(:\n    pass\n", ":1:"),
                                         ("def get_config():\n    x = 1\n      return x\n", ":3:")],
                         ids=["syntax", "indentation"])
def test_config_file_syntax_error_names_file_and_line(tmp_path, capsys, text, where):
    (tmp_path / "broken.py").write_text(text)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--config", str(tmp_path / "broken.py"), "--workdir", str(tmp_path / "run")])
    message = _one_error(exc, capsys)
    assert f"broken.py{where}" in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["{}", "[]", "{garbage", "\xff\xfe"], ids=["empty", "list", "garbage", "bytes"])
def test_corrupt_budget_json_is_named_before_compiling(tmp_path, capsys, monkeypatch, content):
    from transformer_jax.train import loop

    def never(*args, **kwargs):
        raise AssertionError("compiled before budget.json was read")
    monkeypatch.setattr(loop, "_compile", never)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "budget.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--config", TINY, "--workdir", str(workdir), "--config.data.dataset=synthetic",
                  "--config.model.vocab_size=64", "--config.data.max_src_len=8", "--config.budget_minutes=1.0"])
    message = _one_error(exc, capsys)
    assert "budget.json is corrupt" in message and "delete it" in message, message
    assert sorted(os.listdir(workdir)) == ["budget.json"]  # no config, lock, metrics or checkpoints left


def test_decode_input_not_utf8_names_file_and_line(tmp_path, capsys):
    (tmp_path / "in.txt").write_bytes(b"hello\nworld \xff\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["decode", "--pretrained", GPT2, "--input", str(tmp_path / "in.txt")])
    message = _one_error(exc, capsys)
    assert "in.txt: line 2 is not UTF-8" in message, message


def test_decode_stdin_not_utf8_is_one_error_line():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "transformer_jax.cli", "decode", "--pretrained", GPT2],
                          input=b"ok\n\xc3\x28 broken\n", capture_output=True, env=env, cwd=REPO, timeout=120)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --input=stdin: line 2 is not UTF-8 text (byte 1: b'\\xc3'); decode reads UTF-8"], stderr
    assert "Traceback" not in stderr


def test_decode_lines_drop_carriage_returns(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\r\ntwo\r\n")))
    assert cli._read_lines("-") == ["one", "two"]


def test_eval_and_decode_on_a_synthetic_workdir(tmp_path, capsys):
    """eval scores the synthetic eval batches (there is no test split to score); decode, which reads
    text, says that a synthetic workdir has no tokenizer, in one line."""
    import json

    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--config", TINY, "--workdir", workdir, "--config.data.dataset=synthetic",
                     "--config.model.vocab_size=64", "--config.data.max_src_len=8", "--config.num_train_steps=1",
                     "--config.eval_batches=2"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", workdir]) == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["step"] == 1 and np_isfinite(result["eval_loss"]) and "test" not in result
    (tmp_path / "in.txt").write_text("hello\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["decode", "--workdir", workdir, "--input", str(tmp_path / "in.txt")])
    message = _one_error(exc, capsys)
    assert "config.data.dataset='synthetic'" in message and "tokenizer" in message, message


def np_isfinite(x) -> bool:
    import math

    return isinstance(x, float) and math.isfinite(x)


def test_translation_input_longer_than_max_src_len_is_said(capsys):
    class Chars:
        def encode(self, text):
            return [ord(c) for c in text]

    cli._warn_cut_lines(["short", "a much longer line", "ok"], Chars(), src_len=8)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --input line 2 has 18 tokens; the model reads 7 (config.data.max_src_len=8 with EOS): "
                   "the rest is cut"], err
