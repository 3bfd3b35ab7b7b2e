"""Smoke tests of the benchmark scripts: each runs end to end with a tiny setting and writes valid JSON/CSV.

Speed targets live in the benchmarks themselves; these only check that the scripts work.
"""

import csv
import importlib.util
import json
import math
import os

import pytest

from benchmarks import common, lra_listops, train_throughput


def _strict_json(path):
    with open(path) as f:
        return json.load(f, parse_constant=lambda c: pytest.fail(f"{path}: non-standard JSON constant {c}"))


def test_write_json_is_atomic_and_strict(tmp_path):
    path = str(tmp_path / "sub" / "r.json")
    common.write_json(path, {"a": float("nan"), "b": [1.5, float("inf")], "c": "x"})
    common.write_csv(str(tmp_path / "r.csv"), [{"a": 1, "b": None}, {"a": 2, "c": float("nan")}])
    assert _strict_json(path) == {"a": None, "b": [1.5, None], "c": "x"}
    assert sorted(os.listdir(tmp_path / "sub")) == ["r.json"]  # no temporary file left behind
    with open(tmp_path / "r.csv") as f:
        assert list(csv.DictReader(f)) == [{"a": "1", "b": "", "c": ""}, {"a": "2", "b": "", "c": ""}]


def test_time_fn_median_and_environment():
    calls = []
    t = common.time_fn(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(t["times_s"]) == 3 and t["min_s"] <= t["median_s"]
    env = common.environment()
    for key in ("date", "device_kind", "jax", "jaxlib", "flax", "cpu_count"):
        assert env[key]
    assert common.known_peak_flops("NVIDIA H100 80GB HBM3") == 989e12


def test_train_throughput_tiny(tmp_path):
    out = str(tmp_path / "tt.json")
    res = train_throughput.main(["--preset", "tiny", "--lengths", "16", "--variants", "dense", "--batch", "8",
                                 "--steps", "2", "--warmup", "1", "--peak-matmul", "128", "--json", out])
    data = _strict_json(out)
    assert data["environment"]["jax"] and data["settings"]["model"]["d_model"] == 32
    (row,) = data["rows"]
    assert row["status"] == "ok", row
    assert row["variant"] == "dense" and row["tokens_per_step"] == 8 * 16
    assert row["tokens_per_s"] > 0 and 0 < row["mfu"] and math.isfinite(row["model_flops_per_token"])
    assert res["rows"][0]["step_s"] == pytest.approx(8 * 16 / row["tokens_per_s"])
    with open(tmp_path / "tt.csv") as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["dense"]


def test_lra_listops_tiny_budgeted_and_resumable(tmp_path, capsys):
    out = str(tmp_path / "lra.json")
    argv = ["--builder-config", "tiny", "--variants", "windowed", "--budget-minutes", "5", "--max-steps", "2",
            "--batch", "8", "--layers", "1", "--d-model", "16", "--heads", "2", "--d-ff", "32", "--max-len", "200",
            "--warmup", "1", "--window", "16", "--eval-batches", "1", "--workdir", str(tmp_path / "w"),
            "--json", out]
    lra_listops.main(argv)
    data = _strict_json(out)
    (row,) = data["rows"]
    assert row["status"] == "done", row
    assert row["steps"] == 2 and row["paper_model"] == "Local Attention" and row["best_step"] == 2
    assert row["test_examples"] == 50  # the tiny test split, without the filler rows of the last batch
    assert 0.0 <= row["test_accuracy"] <= 100.0 and row["steps_per_s"] > 0
    assert [p["step"] for p in row["curve"]] == [2] and 0 < row["train_minutes"] < 5
    assert data["settings"]["budget_minutes"] == 5 and data["environment"]["jax"]
    base = data["baselines"]["test"]  # the first token alone does at least as well as the majority label
    assert 0 < base["majority"] <= base["first_token"] <= 100
    if importlib.util.find_spec("matplotlib"):  # the bench extra; CI installs only the test one
        assert os.path.getsize(tmp_path / "lra.png") > 0
    capsys.readouterr()
    lra_listops.main(argv)  # a rerun keeps the finished row instead of training again
    assert "windowed: finished earlier, kept" in capsys.readouterr().out
    assert _strict_json(out)["rows"] == data["rows"]


def test_help_and_bad_variant(capsys):
    for module in (train_throughput, lra_listops):
        with pytest.raises(SystemExit) as exc:
            module.parse_args(["--help"])
        assert exc.value.code == 0
        with pytest.raises(SystemExit) as exc:
            module.parse_args(["--variants", "nope"])
        assert exc.value.code == 2
    assert "not one of" in capsys.readouterr().err


def test_quick_sets_cpu_run_but_keeps_explicit_options():
    a = train_throughput.parse_args(["--quick", "--steps", "7"])
    assert a.steps == 7 and a.layers == 2 and a.d_model == 256 and a.lengths == [256, 1024, 4096]
    cpu = lra_listops.parse_args([])
    assert (cpu.layers, cpu.d_model, cpu.batch, cpu.budget_minutes, cpu.builder_config) == (4, 64, 16, 30.0, "full")
    lra = lra_listops.parse_args(["--preset", "lra", "--batch", "64"])
    assert (lra.layers, lra.d_model, lra.heads, lra.d_ff, lra.batch, lra.max_len) == (4, 512, 8, 1024, 64, 2048)


STAND_IN_PEER = '''
from typing import Any
import flax.linen as nn
from flax import struct
import jax.numpy as jnp

@struct.dataclass
class TransformerConfig:  # the fields benchmarks/peer_wmt.py sets on flax examples/wmt's config
    vocab_size: int
    output_vocab_size: int
    share_embeddings: bool = False
    logits_via_embedding: bool = False
    dtype: Any = jnp.float32
    emb_dim: int = 512
    num_heads: int = 8
    num_layers: int = 6
    qkv_dim: int = 512
    mlp_dim: int = 2048
    max_len: int = 2048
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    deterministic: bool = False

class Transformer(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs, targets):
        c = self.config
        x = nn.Embed(c.vocab_size, c.emb_dim)(targets) + nn.Embed(c.vocab_size, c.emb_dim)(inputs).mean(1, keepdims=True)
        x = nn.Dropout(c.dropout_rate)(nn.Dense(c.mlp_dim)(x), deterministic=c.deterministic)
        return nn.Dense(c.output_vocab_size)(x)
'''


def test_peer_wmt_times_both_sides_with_a_stand_in_peer(tmp_path):
    from benchmarks import peer_wmt

    with pytest.raises(SystemExit):
        peer_wmt.parse_args(["--peer-models", str(tmp_path / "missing.py")])
    peer = tmp_path / "models.py"
    peer.write_text(STAND_IN_PEER)
    out = str(tmp_path / "peer.json")
    res = peer_wmt.main(["--peer-models", str(peer), "--layers", "1", "--d-model", "16", "--heads", "2",
                         "--d-ff", "32", "--vocab-size", "50", "--batch", "2", "--length", "8", "--rounds", "2",
                         "--steps", "1", "--peak-matmul", "64", "--json", out])
    ours, *peers = res["rows"]
    assert ours["side"] == "ours" and ours["ours_speedup"] == 1.0
    assert [p["side"] for p in peers] == ["flax_wmt (attention dropout 0.1)", "flax_wmt (attention dropout 0)"]
    for row in res["rows"]:
        assert len(row["step_s_rounds"]) == 2 and row["step_s"] > 0 and 0 < row["vs_matmul_peak"]
    assert _strict_json(out)["peer"]["models_py_sha256"] == __import__("hashlib").sha256(peer.read_bytes()).hexdigest()


def test_blockwise_kernel_counts_the_tiles_it_times(tmp_path):
    from benchmarks import blockwise_kernel
    from transformer_jax.attention import BlockSparse, Windowed, blockwise

    # Windowed(16) over 256 tokens: 16 blocks of 16 rows, each reading 3 key blocks (edges masked)
    assert blockwise_kernel.tiles(Windowed(16), 256) == (16 * 3 * 16 * 16, 16, Windowed(16).keys_per_query(256, False))
    # BlockSparse(16, 3, 2, 3) over 256: 14 non-global blocks x 8 key blocks, 2 global blocks x all keys
    assert blockwise_kernel.tiles(BlockSparse(16, 3, 2, 3), 256)[0] == 14 * 8 * 16 * 16 + 2 * 16 * 256
    out = str(tmp_path / "k.json")
    res = blockwise_kernel.main(["--n", "256", "--heads", "2", "--window", "16", "--block-size", "16",
                                 "--chunk-rows", "32,64", "--rounds", "1", "--json", out])
    assert blockwise.CHUNK_ROWS is None  # restored: later traces use the per-backend default
    assert [(r["pattern"], r["chunk_rows"]) for r in res["rows"]] == [
        ("windowed", 32), ("windowed", 64), ("block_sparse", 32), ("block_sparse", 64)]
    for r in res["rows"]:
        assert r["fwd_bwd_s"] > 0 and 0 < r["useful_vs_peak"] < r["executed_vs_peak"]
    assert _strict_json(out)["rows"] == res["rows"]
