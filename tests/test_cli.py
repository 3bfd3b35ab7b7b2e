"""The `transformer-jax` command line: the default config (tiny overrides) trains end to end,
writes metrics.jsonl, a checkpoint and eval.json, and resumes; bad configs fail before compiling
with a message naming the field."""

import json
import os

import pytest

from transformer_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(REPO, "configs", "default.py")
TINY = ["--config.model.d_model=32", "--config.model.num_heads=2", "--config.model.d_ff=64",
        "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
        "--config.model.dropout_rate=0.0", "--config.batch_size=8", "--config.data.max_src_len=16",
        "--config.data.max_tgt_len=48", "--config.log_every=1", "--config.checkpoint_every=2",
        "--config.eval_every=0", "--config.decode.beam_size=2", "--config.decode.max_examples=4",
        "--config.decode.max_len=48", "--config.decode.batch_size=8", "--config.schedule.warmup_steps=2"]


@pytest.mark.slow
def test_default_config_trains_writes_metrics_and_resumes(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    args = ["train", "--config", DEFAULT, "--workdir", workdir, *TINY]
    assert cli.main([*args, "--config.num_train_steps=2", "--config.decode.bleu_at_end=False"]) == 0
    first = capsys.readouterr().out
    assert "mesh data=8" in first and "parameters" in first and "MiB per device" in first
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
    assert cli.main([*args, "--config.num_train_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "resumed from checkpoint at step 2" in out and "BLEU" in out
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"loss", "learning_rate", "tokens_per_sec"} <= set(r) for r in records)
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert result["examples"] == 4 and "nrefs:1" in result["signature"] and 0 <= result["bleu"] <= 100
    assert os.listdir(os.path.join(workdir, "tensorboard"))


@pytest.mark.parametrize("override,message", [
    ("--config.mesh.tensor=3", "mesh.data=-1 cannot fill 8 devices"),
    ("--config.batch_size=12", "config.batch_size=12 is not divisible by the batch shards"),
    ("--config.micro_batches=3", "config.micro_batches=3"),
    ("--config.optimizer.name=lamb", "config.optimizer.name='lamb' is not one of adamw"),
    ("--config.schedule.name=poly", "config.schedule.name='poly' is not one of inverse_sqrt"),
    ("--config.model.d_model=30", "config.model: TransformerConfig.num_heads=4 must divide d_model=30"),
    ("--config.nonfinite=ignore", "config.nonfinite='ignore'"),
    ("--config.optimiser.name=adamw", "unknown config key in --config.optimiser.name"),
])
def test_bad_config_fails_before_compiling_naming_the_field(tmp_path, override, message):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        cli.main(["train", "--config", DEFAULT, "--workdir", str(tmp_path / "w"), override])
    assert not os.path.exists(tmp_path / "w")  # nothing was created, nothing compiled


def test_missing_workdir_parent_and_config_file(tmp_path):
    with pytest.raises(SystemExit, match="parent directory .* does not exist"):
        cli.main(["train", "--config", DEFAULT, "--workdir", str(tmp_path / "no" / "such" / "dir")])
    with pytest.raises(SystemExit, match="no such file"):
        cli.main(["train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")])
    with pytest.raises(SystemExit, match="unknown command 'fit'"):
        cli.main(["fit"])
