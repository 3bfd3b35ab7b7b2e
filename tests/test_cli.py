"""The `transformer-jax` command line: the default config (tiny overrides) trains end to end,
writes metrics.jsonl, a checkpoint and eval.json, and resumes; bad configs fail before compiling
with a message naming the field."""

import dataclasses
import json
import math
import os

import pytest

from transformer_jax import cli
from transformer_jax.attention import BlockSparse, Dense, Windowed
from transformer_jax.config import TransformerConfig
from transformer_jax.train import experiment

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
    assert cli.main([*args, "--config.num_train_steps=2", "--config.test_at_end=False"]) == 0
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


def _model(*overrides):
    """TransformerConfig from configs/default.py with command-line overrides (parsed, not trained)."""
    fv = cli._flags(["--config", DEFAULT, "--workdir", "unused", *overrides])
    return fv.config, experiment.model_config(fv.config)


def test_every_transformer_config_field_is_a_key_and_settable():
    """config.model lists every TransformerConfig field (fields added later appear by themselves), and
    each can be set from the command line: re-setting every field to its own value changes nothing."""
    config, cfg = _model()
    names = [f.name for f in dataclasses.fields(TransformerConfig)]
    assert sorted(config.model.keys()) == sorted(names)
    again = [f"--config.model.{n}={v if isinstance(v, str) else repr(v)}"
             for n, v in ((n, getattr(cfg, n)) for n in names)]
    assert _model(*again)[1] == cfg


def test_model_overrides_including_attention_specs_and_none_defaults():
    _, cfg = _model("--config.model.activation=gelu", "--config.model.norm=rmsnorm",
                    "--config.model.norm_position=pre", "--config.model.position=rotary",
                    "--config.model.head_dim=16", "--config.model.param_dtype=bfloat16",
                    "--config.model.encoder_attention=Windowed(128)",
                    "--config.model.decoder_attention=BlockSparse(block_size=64)",
                    "--config.model.cross_attention=Dense()")
    assert (cfg.activation, cfg.norm, cfg.norm_position, cfg.position) == ("gelu", "rmsnorm", "pre", "rotary")
    assert cfg.head_dim == 16 and cfg.param_dtype == "bfloat16"
    assert cfg.encoder_attention == Windowed(128)
    assert cfg.decoder_attention == BlockSparse(block_size=64) and cfg.cross_attention == Dense()
    _, cfg = _model("--config.model.encoder_attention=(Windowed(8), Dense(), BlockSparse(16))")
    assert cfg.encoder_attention == (Windowed(8), Dense(), BlockSparse(16))  # one per layer (3 layers)
    _, cfg = _model("--config.model.head_dim=16", "--config.model.head_dim=None")
    assert cfg.head_dim is None


@pytest.mark.parametrize("text,want", [
    ("Dense()", Dense()), ("Dense", Dense()), ("Windowed(128)", Windowed(128)),
    ("Windowed(window=128)", Windowed(128)), (" BlockSparse(block_size=64) ", BlockSparse(block_size=64)),
    ("[Dense(), Windowed(4)]", (Dense(), Windowed(4))),
])
def test_parse_attention_accepts_spec_calls(text, want):
    assert experiment.parse_attention(text, "encoder_attention") == want


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "Windowed(window=n)", "Dense().mask", "lambda: Dense()",
    "Windowed(*[1])", "Dense(**{})", "Windowed(", "open('x')", "Windowed(128)(1)",
])
def test_parse_attention_rejects_anything_else_naming_the_field(text):
    with pytest.raises(ValueError, match=r"config\.model\.encoder_attention=.*valid specs: BlockSparse, Dense"):
        experiment.parse_attention(text, "encoder_attention")


def test_train_help_lists_the_config_keys_with_their_defaults(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--config.batch_size=64" in out and "--config.optimizer.learning_rate=0.002" in out
    assert "--config.model.head_dim=None" in out and "--config.model.norm_position='post'" in out
    assert "--config.model.encoder_attention=Dense(" in out
    for f in dataclasses.fields(TransformerConfig):
        assert f"--config.model.{f.name}=" in out
    assert cli.main(["train", "--help", "--config", os.path.join(REPO, "configs", "long.py")]) == 0
    assert "--config.model.encoder_attention=Windowed(window=128)" in capsys.readouterr().out


def test_unknown_key_names_the_flag_that_has_it(tmp_path):
    with pytest.raises(SystemExit, match=r"in --config\.optimiser\.name") as exc:
        cli.main(["train", "--config", DEFAULT, "--workdir", str(tmp_path / "w"), "--config.batch_size=16",
                  "--config.seed=1", "--config.optimiser.name=adamw"])
    assert "--config.batch_size" not in str(exc.value.code) and "optimizer" in str(exc.value.code)


LM = os.path.join(REPO, "configs", "lm.py")
TINY_LM = ["--config.model.d_model=32", "--config.model.num_heads=2", "--config.model.d_ff=64",
           "--config.model.num_decoder_layers=1", "--config.model.vocab_size=320", "--config.model.max_len=48",
           "--config.data.vocab_size=300", "--config.data.max_tgt_len=32", "--config.batch_size=8",
           "--config.num_train_steps=2", "--config.log_every=1", "--config.eval_every=0",
           "--config.schedule.warmup_steps=1", "--config.decode.batch_size=4"]


def test_causal_lm_trains_reports_perplexity_and_decode_continues_prompts(tmp_path, capsys, monkeypatch):
    """configs/lm.py on the built-in corpus: a DecoderLM, perplexity on the test split at the end;
    `decode --workdir` reads prompts from stdin and prints one continuation per line; eval and
    decode on quantized weights (--quantize)."""
    import io

    workdir = str(tmp_path / "lm")
    data_dir = f"--config.data.data_dir={tmp_path / 'tfds'}"
    assert cli.main(["train", "--config", LM, "--workdir", workdir, data_dir, *TINY_LM]) == 0
    out = capsys.readouterr().out
    assert "causal LM task, model DecoderLM" in out and "test: accuracy" in out and "perplexity" in out
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert result["split"] == "test" and result["perplexity"] == pytest.approx(math.exp(result["nll"]))
    monkeypatch.setattr("sys.stdin", io.StringIO("The if statement\nA module\n"))
    assert cli.main(["decode", "--workdir", workdir, "--max_new_tokens", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 2 and all(isinstance(line, str) for line in lines[-2:])
    with pytest.raises(SystemExit, match=r"--max_new_tokens=-1 must be >= 0"):
        cli.main(["decode", "--workdir", workdir, "--max_new_tokens", "-1"])
    # --quantize: eval on int8 weights (perplexity within a few per cent of the float32 run's, from
    # smaller weights; eval_int8.json beside eval.json), decode on bfloat16; unknown dtypes are named
    assert cli.main(["eval", "--workdir", workdir, "--quantize", "int8"]) == 0
    assert "int8: " in capsys.readouterr().err
    q = json.load(open(os.path.join(workdir, "eval_int8.json")))
    assert q["quantize"] == "int8" and q["parameter_bytes"] < 0.75 * q["unquantized_bytes"]  # embeddings stay
    assert q["test"]["perplexity"] == pytest.approx(result["perplexity"], rel=0.05)
    assert q["test"]["perplexity"] != result["perplexity"]  # it did run on other weights
    monkeypatch.setattr("sys.stdin", io.StringIO("The if statement\n"))
    assert cli.main(["decode", "--workdir", workdir, "--max_new_tokens", "3", "--quantize", "bfloat16"]) == 0
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit, match=r"--quantize='int4' is not one of int8, bfloat16, float16"):
        cli.main(["eval", "--workdir", workdir, "--quantize", "int4"])
    with pytest.raises(SystemExit, match=r"--quantize is for eval and decode"):
        cli.main(["train", "--config", LM, "--workdir", workdir, "--quantize", "int8"])

