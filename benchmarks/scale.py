"""Scanned layers and rematerialisation, measured side by side in one run.

(a) Compile time of a training gradient (value_and_grad of the loss) for a decoder-only model at
    2 and 24 layers, unscanned (a Python loop: one copy of the layer per layer in the program) and
    scanned (`scan_layers=True`: one loop body). Target: scanned 24 layers within 1.5x of 2 layers.
(b) For a base-size encoder-decoder (d_model 512, 8 heads, d_ff 2048, 6 + 6 layers) at length
    1024, the compiled program's temporary memory (`memory_analysis().temp_size_in_bytes`: the
    activations the backward pass keeps, plus scratch) and the step time of one gradient, for each
    `remat` policy, scanned; the policies' steps are timed in interleaved rounds (median), so
    load on a shared machine falls on all of them alike. Target: `full` cuts temporary memory
    >= 3x against `none`. Compile times are the minimum of --compile-repeats interleaved rounds.

    python -m benchmarks.scale            # ~20-40 min on 2 busy CPU cores
    python -m benchmarks.scale --quick    # smoke: tiny sizes, seconds

Writes benchmarks/results/scale_cpu.json and .csv (device, versions, date included); results are
rewritten after every measurement, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from typing import Any

from benchmarks import common

REMATS = ("none", "full", "dots", "offload")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/scale_cpu.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    p.add_argument("--depths", default="2,24", help="layer counts for the compile-time comparison")
    p.add_argument("--length", type=int, default=1024, help="sequence length of the remat comparison")
    p.add_argument("--batch", type=int, default=1, help="rows of the remat comparison")
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers of the remat comparison")
    p.add_argument("--repeats", type=int, default=2, help="timed steps per remat policy (median reported)")
    p.add_argument("--compile-repeats", type=int, default=3,
                   help="compiles per (depth, scan) setting, interleaved; the minimum is reported (on a busy "
                        "machine, noise only ever adds time)")
    p.add_argument("--parts", default="compile,remat",
                   help="which parts to run; rows of the parts not run are kept from an existing --out")
    return p.parse_args(argv)


def _grad_fn(model, inputs):
    """jit(value_and_grad) of a next-token cross-entropy (the training step's backward pass)."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss(params):
        logits = model.apply({"params": params}, *inputs)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, inputs[-1]))

    return jax.jit(jax.value_and_grad(loss))


def _params(model, inputs):
    import flax.linen as nn
    import jax

    return jax.jit(lambda k: nn.unbox(model.init(k, *inputs)["params"]))(jax.random.key(0))


def compile_time(cfg, depth: int, scan: bool, seq: int) -> dict[str, Any]:
    """Seconds to trace + lower and to compile the gradient of a `depth`-layer DecoderLM (jit's
    cache is bypassed: a fresh model and function each time)."""
    import jax
    import jax.numpy as jnp

    import transformer_jax as tj

    c = cfg.replace(num_decoder_layers=depth, scan_layers=scan)
    model = tj.DecoderLM(c)
    inputs = (jnp.ones((2, seq), jnp.int32),)
    shapes = jax.eval_shape(lambda: _params(model, inputs))
    t0 = time.perf_counter()
    lowered = _grad_fn(model, inputs).lower(shapes)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"part": "compile", "layers": depth, "scan_layers": scan, "lower_s": t1 - t0, "compile_s": t2 - t1,
            "total_s": t2 - t0}


def remat_compile(cfg, remat: str, batch: int, length: int) -> tuple[dict[str, Any], Any]:
    """(row with the temporary bytes of the compiled gradient under one remat policy, a zero-argument
    function running one step)."""
    import jax

    import transformer_jax as tj

    c = cfg.replace(remat=remat, scan_layers=True)
    model = tj.Transformer(c)
    key = jax.random.key(1)
    src = jax.random.randint(key, (batch, length), 3, c.vocab_size)
    tgt = jax.random.randint(jax.random.fold_in(key, 1), (batch, length), 3, c.vocab_size)
    inputs = (src, tgt)
    params = _params(model, inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        compiled = _grad_fn(model, inputs).lower(params).compile()
        compile_s = time.perf_counter() - t0
    mem = common.compiled_memory_bytes(compiled) or {}
    row = {"part": "remat", "remat": remat, "scan_layers": True, "batch": batch, "length": length,
           "temp_bytes": compiled.memory_analysis().temp_size_in_bytes, "total_bytes": mem.get("total"),
           "compile_s": compile_s, "warnings": sorted({str(w.message) for w in caught})}
    return row, lambda: common.block(compiled(params))


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    import transformer_jax as tj

    if args.quick:
        small = tj.tiny(num_encoder_layers=2, num_decoder_layers=2, max_len=64, vocab_size=64)
        depths, length, base, seq = (1, 4), 64, small, 16
    else:
        depths = tuple(int(d) for d in args.depths.split(","))
        small = tj.tiny(vocab_size=1000, d_model=128, num_heads=4, d_ff=512, num_encoder_layers=0, max_len=128)
        base = tj.base(vocab_size=8000, max_len=args.length, dropout_rate=0.0, num_encoder_layers=args.layers,
                       num_decoder_layers=args.layers)
        length, seq = args.length, 128
    result: dict[str, Any] = {
        "benchmark": "scale", "environment": common.environment(),
        "settings": {"compile_model": {k: getattr(small, k) for k in ("d_model", "num_heads", "d_ff", "vocab_size")},
                     "compile_batch_len": [2, seq], "depths": list(depths),
                     "remat_model": {k: getattr(base, k) for k in ("d_model", "num_heads", "d_ff", "vocab_size",
                                                                   "num_encoder_layers", "num_decoder_layers")},
                     "remat_batch": args.batch, "remat_length": length, "dtype": "float32"},
        "rows": []}

    def save():
        rows = result["rows"]
        result["summary"] = summarize(rows)
        common.write_json(args.out, result)
        common.write_csv(os.path.splitext(args.out)[0] + ".csv",
                         [{k: v for k, v in r.items() if k not in ("step_times_s", "warnings", "runs_s")}
                          for r in rows])

    parts = set(args.parts.split(","))
    if os.path.exists(args.out):  # keep the rows of the parts not rerun
        import json

        with open(args.out) as f:
            result["rows"] = [r for r in json.load(f)["rows"] if r["part"] not in parts]
    if "compile" in parts:
        best: dict[tuple, dict] = {}
        for _ in range(args.compile_repeats):  # rounds: every setting once per round
            for scan in (False, True):
                for depth in depths:
                    row = compile_time(small, depth, scan, seq)
                    print(f"compile: {depth} layers, scan_layers={scan}: {row['total_s']:.1f} s", flush=True)
                    key = (depth, scan)
                    runs = best.get(key, {}).get("runs_s", []) + [row["total_s"]]
                    if key not in best or row["total_s"] < best[key]["total_s"]:
                        best[key] = row
                    best[key]["runs_s"] = runs
        result["rows"] += list(best.values())
        save()
    if "remat" in parts:
        steps = {}
        for remat in REMATS:
            row, steps[remat] = remat_compile(base, remat, args.batch, length)
            print(f"remat={remat}: temp {row['temp_bytes'] / 2**20:.0f} MiB {row['warnings'] or ''}", flush=True)
            result["rows"].append(row)
            save()
        rows = {r["remat"]: r for r in result["rows"] if r["part"] == "remat"}
        for round_no in range(args.repeats + 1):  # round 0 warms up; rounds interleave the policies
            for remat in REMATS:
                t = time.perf_counter()
                steps[remat]()
                if round_no:
                    rows[remat].setdefault("step_times_s", []).append(time.perf_counter() - t)
                    rows[remat]["step_s"] = statistics.median(rows[remat]["step_times_s"])
                    print(f"remat={remat}: step {rows[remat]['step_s']:.2f} s", flush=True)
            save()
    print(summarize(result["rows"]))
    return result


def summarize(rows) -> dict[str, Any]:
    """The two target ratios, from whatever rows are done."""
    out: dict[str, Any] = {}
    comp = {(r["layers"], r["scan_layers"]): r["total_s"] for r in rows if r["part"] == "compile"}
    depths = sorted({d for d, _ in comp})
    for scan in (False, True):
        if len(depths) >= 2 and all((d, scan) in comp for d in (depths[0], depths[-1])):
            out[f"compile_ratio_{depths[-1]}_vs_{depths[0]}_{'scanned' if scan else 'unscanned'}"] = (
                comp[(depths[-1], scan)] / comp[(depths[0], scan)])
    temp = {r["remat"]: r["temp_bytes"] for r in rows if r["part"] == "remat"}
    step = {r["remat"]: r.get("step_s") for r in rows if r["part"] == "remat"}
    for remat in REMATS[1:]:
        if "none" in temp and remat in temp:
            out[f"temp_reduction_{remat}"] = temp["none"] / max(temp[remat], 1)
            if step[remat] and step["none"]:
                out[f"step_time_ratio_{remat}"] = step[remat] / step["none"]
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
