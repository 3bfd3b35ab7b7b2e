"""Smoke test of benchmarks/pretrained_load.py: a small GPT-2 made locally, loaded in fresh processes and
run forward, reference (torch) part skipped; checks the result file's structure, not speed."""

import csv
import json
import time

import numpy as np
import pytest
from safetensors import safe_open

from benchmarks import pretrained_load


def _strict_json(path):
    with open(path) as f:
        return json.load(f, parse_constant=lambda c: pytest.fail(f"{path}: non-standard JSON constant {c}"))


def test_checkpoint_has_gpt2_names_and_layouts(tmp_path):
    shape = pretrained_load.QUICK_SHAPE
    info = pretrained_load.make_checkpoint(tmp_path, shape, seed=3)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    expected = pretrained_load.gpt2_tensor_shapes(shape)
    d = shape["n_embd"]
    assert expected["transformer.h.0.attn.c_attn.weight"] == (d, 3 * d)  # Conv1D: [in, out]
    assert expected["transformer.h.1.mlp.c_proj.weight"] == (4 * d, d)
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == expected
        first = f.get_tensor("transformer.wte.weight")
    assert info["params"] == sum(int(np.prod(s)) for s in expected.values())
    pretrained_load.make_checkpoint(tmp_path / "again", shape, seed=3)  # seeded: the same tensors
    with safe_open(str(tmp_path / "again" / "model.safetensors"), framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("transformer.wte.weight"), first)


def test_pretrained_load_quick_no_reference(tmp_path):
    out = tmp_path / "pl.json"
    t0 = time.perf_counter()
    pretrained_load.main(["--quick", "--no-reference", "--load-repeats", "2", "--repeats", "2", "--warmup", "1",
                          "--out", str(out)])
    assert time.perf_counter() - t0 < 60
    data = _strict_json(out)
    env = data["environment"]
    for key in ("date", "device_kind", "jax", "jaxlib", "flax", "threads", "load_average_start", "load_average_end"):
        assert env[key] is not None, key
    assert env["threads"]["xla_intra_op_threads"] >= 1
    ckpt = data["checkpoint"]
    assert ckpt["shape"] == pretrained_load.QUICK_SHAPE and ckpt["file_bytes"] >= ckpt["param_bytes"] > 0
    load = data["load"]
    assert len(load["runs"]) == 2
    med = load["median"]
    for key in ("load_s", "import_s", "backend_init_s", "peak_rss", "peak_minus_import", "peak_minus_backend_init",
                "rss_after_load", "device_param_bytes"):
        assert med[key] is not None and med[key] >= 0, key
    assert med["device_param_bytes"] == ckpt["param_bytes"]
    assert data["reference"]["status"].startswith("skipped") and data["correctness"]["status"].startswith("skipped")
    assert data["reference_load"]["status"].startswith("skipped")
    rows = data["forward"]
    assert [r["shape"] for r in rows] == ["1x128", "4x32"]
    for r in rows:
        assert r["ours_tokens_per_s"] > 0 and len(r["ours_times_s"]) == 2 and "ratio_ours_over_ref" not in r
    with open(out.with_suffix(".csv")) as f:
        assert [r["shape"] for r in csv.DictReader(f)] == ["1x128", "4x32"]
