"""Bad command lines (issue 15): each fails with one `error:` line naming the field, file or value,
a non-zero exit and no traceback, before anything is written, restored or compiled (no workdir is
created, none is left half-made)."""

import os
import subprocess
import sys

import pytest

from transformer_jax import cli
from transformer_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(REPO, "configs", "default.py")


def _train(workdir, *overrides):
    return ["train", "--config", DEFAULT, "--workdir", workdir, *overrides]


# (id, argv from (tmp_path, run dir), what the error line must name)
CASES = [
    ("workdir_is_a_file", lambda t, w: _train(str(t / "file")), ["--workdir=", "file", "is a file"]),
    ("workdir_under_a_file", lambda t, w: _train(str(t / "file" / "run")), ["--workdir=", "lies under", "file"]),
    ("decode_workdir_is_a_file", lambda t, w: ["decode", "--workdir", str(t / "file")], ["--workdir=", "is a file"]),
    ("decode_missing_workdir", lambda t, w: ["decode", "--workdir", w], ["--workdir=", "does not exist"]),
    ("decode_empty_workdir", lambda t, w: ["decode", "--workdir", str(t / "empty")], ["empty", "no checkpoint"]),
    ("eval_empty_workdir", lambda t, w: ["eval", "--workdir", str(t / "empty")], ["empty", "no checkpoint"]),
    ("decode_missing_input", lambda t, w: ["decode", "--workdir", str(t / "empty"), "--input", str(t / "no.txt")],
     ["--input=", "no.txt", "no such file"]),
    ("decode_negative_beam", lambda t, w: ["decode", "--workdir", str(t / "empty"), "--beam_size", "-1"],
     ["--beam_size=-1"]),
    ("tfds_not_prepared", lambda t, w: _train(w, "--config.data.dataset=wmt14_translate/de-en",
                                              f"--config.data.data_dir={t / 'empty'}"),
     ["wmt14_translate/de-en", "not prepared", "tfds build"]),
    ("keep_checkpoints_0", lambda t, w: _train(w, "--config.keep_checkpoints=0"), ["config.keep_checkpoints=0"]),
    ("negative_learning_rate", lambda t, w: _train(w, "--config.optimizer.learning_rate=-0.001"),
     ["config.optimizer.learning_rate=-0.001", "> 0"]),
    ("negative_eval_every", lambda t, w: _train(w, "--config.eval_every=-5"), ["config.eval_every=-5"]),
    ("decoder_lm_on_translation", lambda t, w: _train(w, "--config.model_type=decoder_lm"),
     ["config.model_type='decoder_lm'", "tjax_numbers", "translation", "transformer"]),
    ("classifier_on_translation", lambda t, w: _train(w, "--config.model_type=encoder_classifier"),
     ["config.model_type='encoder_classifier'", "translation"]),
    ("transformer_on_classification", lambda t, w: _train(w, "--config.data.dataset=tjax_listops",
                                                          "--config.model_type=transformer"),
     ["config.model_type='transformer'", "tjax_listops", "classification", "encoder_classifier"]),
    ("unknown_key_after_another", lambda t, w: _train(w, "--config.batch_size=16", "--config.foo=1"),
     ["--config.foo", "'foo'"]),
    ("unknown_model_key_after_another", lambda t, w: _train(w, "--config.seed=3", "--config.model.dmodel=8"),
     ["--config.model.dmodel", "d_model"]),
    ("unknown_attention_spec", lambda t, w: _train(w, "--config.model.encoder_attention=Local(8)"),
     ["config.model.encoder_attention", "Local", "Windowed", "BlockSparse"]),
    ("attention_spec_not_a_literal", lambda t, w: _train(w, "--config.model.encoder_attention=__import__('os')"),
     ["config.model.encoder_attention", "__import__"]),
    ("bad_attention_argument", lambda t, w: _train(w, "--config.model.encoder_attention=Windowed(-3)"),
     ["config.model.encoder_attention", "Windowed(-3)"]),
    ("config_file_with_unknown_model_field", lambda t, w: ["train", "--config", str(t / "bad.py"), "--workdir", w],
     ["config.model.dmodel", "d_model"]),
    ("vocab_smaller_than_tokenizer", lambda t, w: _train(w, "--config.model.vocab_size=100"),
     ["config.model.vocab_size=100", "config.data.vocab_size=512"]),
    ("bad_head_dim", lambda t, w: _train(w, "--config.model.head_dim=-4"), ["head_dim", "-4"]),
    ("unknown_best_metric", lambda t, w: _train(w, "--config.best_metric=bleu"), ["config.best_metric='bleu'",
                                                                                   "eval_loss"]),
    ("zero_decode_beam", lambda t, w: _train(w, "--config.decode.beam_size=0"), ["config.decode.beam_size=0"]),
    ("init_from_nothing", lambda t, w: _train(w, f"--config.init_from={t / 'nowhere'}"),
     ["config.init_from=", "nowhere", "no such directory"]),
    ("init_from_empty_directory", lambda t, w: _train(w, f"--config.init_from={t / 'empty'}"),
     ["config.init_from=", "holds neither a checkpoint", "config.json"]),
    ("freeze_not_a_regex", lambda t, w: _train(w, "--config.freeze=('encoder/[',)"),
     ["config.freeze", "'encoder/['", "not a regular expression"]),
    ("masked_lm_on_translation", lambda t, w: _train(w, "--config.model_type=masked_lm"),
     ["config.model_type='masked_lm'", "tjax_numbers", "translation", "transformer"]),
    ("negative_weight_decay", lambda t, w: _train(w, "--config.optimizer.weight_decay=-1.0"),
     ["config.optimizer.weight_decay=-1.0"]),
]


@pytest.mark.parametrize("argv_fn,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line(tmp_path, capsys, monkeypatch, argv_fn, names):
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.py").write_text("from transformer_jax.train.experiment import model_section\n"
                                     "def get_config():\n    return model_section(dmodel=8)\n")

    def never(*args, **kwargs):
        raise AssertionError("restored or built before the input was checked")

    monkeypatch.setattr(loop, "restore_for_eval", never)
    run = str(tmp_path / "run")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as exc:
        cli.main(argv_fn(tmp_path, run))
    message = exc.value.code
    assert isinstance(message, str) and message.startswith("error: "), message  # exits 1, message to stderr
    assert sum(line.startswith("error:") for line in message.splitlines()) == 1
    for name in names:
        assert name in message.splitlines()[0] or name in message, (name, message)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert sorted(os.listdir(tmp_path)) == before  # no workdir made
    assert os.listdir(tmp_path / "empty") == []  # nothing written into an existing one
    assert (tmp_path / "file").read_text() == "not a directory\n"


def test_subprocess_exit_code_and_stderr(tmp_path):
    """The real entry point: exit status 1, a single `error:` line on stderr, no traceback."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "transformer_jax.cli", "decode", "--workdir", str(tmp_path / "x")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert lines == [f"error: --workdir={str(tmp_path / 'x')!r} does not exist; train there first"], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not os.path.exists(tmp_path / "x")
