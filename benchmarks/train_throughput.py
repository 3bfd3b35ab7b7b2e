"""Training throughput and MFU of the encoder-decoder Transformer across lengths and encoder attention.

One full training step — forward, backward, global-norm clip and AdamW update — compiled through the
library's own `make_train_step` / `create_train_state` / `jit_train_step` (the step `train()` runs),
on random tokens (no padding) with source length = target length = L.

    python -m benchmarks.train_throughput                      # base model, 256..8192, GPU settings
    python -m benchmarks.train_throughput --quick              # the committed CPU run

Attention: the ENCODER self-attention is the variant under test (dense | flash | windowed |
block_sparse); the decoder self-attention stays dense causal and cross-attention stays dense
(`--decoder windowed` makes decoder self-attention windowed too). Keeping the decoder fixed means the
differences between rows of one length come from the encoder alone; at long L the dense decoder and
cross-attention remain O(L²) and bound the gain.

FLOPs: `transformer_jax.model.flops_per_token` (training = 3 × forward, attention counted over the
keys each spec visits: the 'useful' FLOPs) × target tokens per step. XLA's own count of the compiled
step (`cost_analysis`, 'executed' FLOPs incl. masked tile work and the optimizer) is recorded beside it.

MFU = achieved useful FLOP/s ÷ peak. On a CPU there is no meaningful datasheet peak, so the peak is a
square matmul (`--peak-matmul`³, same dtype) measured in the same run, before and after the sweep
(the larger is used); `vs_matmul` also divides by a matmul of the step's own MLP shape
([B·L, D] @ [D, F]) measured right after each config. On a GPU/TPU with a known bf16 peak
(H100 SXM: 989 TFLOP/s) `mfu_datasheet` uses it as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

from benchmarks import common

VARIANTS = ("dense", "flash", "windowed", "block_sparse")
DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
# The committed CPU run (2 shared cores): a reduced model, lengths that fit in ~10 minutes.
QUICK = dict(layers=2, d_model=256, heads=4, d_ff=1024, vocab_size=4096, lengths="256,1024,4096",
             batch_tokens=1024, steps=2, warmup=1, max_seconds=120.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base", choices=("tiny", "base", "big"), help="model preset (config.py)")
    p.add_argument("--layers", type=int, help="encoder and decoder layers (default: the preset's)")
    p.add_argument("--d-model", type=int, help="model width (default: the preset's)")
    p.add_argument("--heads", type=int, help="attention heads (default: the preset's)")
    p.add_argument("--d-ff", type=int, help="MLP width (default: the preset's, or 4·d_model with --d-model)")
    p.add_argument("--vocab-size", type=int, help="vocabulary (default: the preset's, 37000 for base)")
    p.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                   help="comma-separated source = target lengths")
    p.add_argument("--variants", default="dense,windowed,block_sparse",
                   help=f"comma-separated encoder attention variants from {', '.join(VARIANTS)}")
    p.add_argument("--window", type=int, default=128, help="Windowed(window): keys within ±window")
    p.add_argument("--block-size", type=int, default=64, help="BlockSparse / Flash block size")
    p.add_argument("--decoder", default="dense", choices=("dense", "windowed"),
                   help="decoder self-attention: dense causal (default) or Windowed(--window) causal")
    p.add_argument("--batch-tokens", type=int, default=16384,
                   help="target tokens per step; batch = max(1, batch_tokens // L) (rounded up to the device count)")
    p.add_argument("--batch", type=int, help="fixed batch size (sequences), overrides --batch-tokens")
    p.add_argument("--steps", type=int, default=10, help="timed steps per config (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="computation dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--dropout", type=float, help="dropout rate (default: the preset's; 0.1 for base)")
    p.add_argument("--max-seconds", type=float, default=300.0,
                   help="skip a config whose first step × (warmup + steps) exceeds this (its one-step time is still "
                        "recorded), and the longer lengths of that variant")
    p.add_argument("--peak-matmul", type=int, default=0,
                   help="side of the square matmul measured as the peak (default 2048 on CPU, 8192 otherwise)")
    p.add_argument("--quick", action="store_true",
                   help="the committed CPU run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--json", default=None, help="result JSON (default benchmarks/results/train_throughput_<backend>.json)")
    p.add_argument("--csv", default=None, help="result CSV (default: the JSON path with .csv)")
    p.add_argument("--png", default=None, help="optional plot of tokens/s and MFU against length")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) in (None, p.get_default(key)):
                setattr(args, key, value)
    args.lengths = [int(x) for x in str(args.lengths).split(",") if x]
    args.variants = [x.strip() for x in args.variants.split(",") if x.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: {bad[0]!r} is not one of {', '.join(VARIANTS)}")
    if any(n <= 0 for n in args.lengths):
        p.error(f"--lengths must be positive integers; got {args.lengths}")
    return args


def encoder_spec(variant: str, args):
    from transformer_jax.attention import BlockSparse, Dense, Flash, Windowed

    return {"dense": lambda: Dense(), "flash": lambda: Flash(block_size=args.block_size),
            "windowed": lambda: Windowed(args.window),
            "block_sparse": lambda: BlockSparse(block_size=args.block_size)}[variant]()


def model_config(args, variant: str, length: int):
    from transformer_jax.attention import Dense, Windowed
    from transformer_jax.config import preset

    over: dict[str, Any] = dict(max_len=length, dtype=args.dtype,
                                encoder_attention=encoder_spec(variant, args),
                                decoder_attention=Windowed(args.window) if args.decoder == "windowed" else Dense(),
                                cross_attention=Dense())
    if args.layers is not None:
        over.update(num_encoder_layers=args.layers, num_decoder_layers=args.layers)
    if args.d_model is not None:
        over.update(d_model=args.d_model, d_ff=args.d_ff or 4 * args.d_model)
    elif args.d_ff is not None:
        over.update(d_ff=args.d_ff)
    for key, field in (("heads", "num_heads"), ("vocab_size", "vocab_size"), ("dropout", "dropout_rate")):
        if getattr(args, key) is not None:
            over[field] = getattr(args, key)
    return preset(args.preset, **over)


def batch_size(args, length: int, num_devices: int) -> int:
    b = args.batch if args.batch else max(1, args.batch_tokens // length)
    return -(-b // num_devices) * num_devices


def run_config(args, variant: str, length: int, peak: float, known_peak: float | None) -> dict[str, Any]:
    """Compile and time one (variant, length); returns a result row (status 'ok' or why it was skipped)."""
    import jax
    import optax

    from transformer_jax import sharding as shd
    from transformer_jax.attention.module import keys_per_query
    from transformer_jax.model import Transformer, flops_per_token
    from transformer_jax.train.optim import make_optimizer
    from transformer_jax.model import param_count as count_params
    from transformer_jax.train.state import abstract_state, create_train_state
    from transformer_jax.train.step import jit_train_step, make_train_step

    cfg = model_config(args, variant, length)
    mesh = shd.make_mesh()
    b = batch_size(args, length, mesh.devices.size)
    row: dict[str, Any] = dict(variant=variant, src_len=length, tgt_len=length, batch=b,
                               encoder_attention=repr(cfg.encoder_attention),
                               decoder_attention=repr(cfg.decoder_attention),
                               keys_per_query_encoder=keys_per_query(cfg.encoder_attention, length, False),
                               tokens_per_step=b * length)
    rng = np.random.default_rng(length)
    tokens = lambda: rng.integers(4, cfg.vocab_size, (b, length), dtype=np.int32)  # noqa: E731 - no padding
    batch = {"src": tokens(), "tgt_in": tokens(), "tgt_out": tokens()}
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}

    model = Transformer(cfg)
    schedule = optax.constant_schedule(1e-4)
    tx = make_optimizer("adamw", schedule, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01, clip_norm=1.0)
    t0 = time.perf_counter()
    state, shardings = create_train_state(model, tx, shapes, mesh, seed=0)
    row["params"] = count_params(state.params)
    step_fn = make_train_step(model, tx, schedule)
    with shd.activate(mesh):
        jitted, _ = jit_train_step(step_fn, shardings, shapes, mesh)
        compiled = jitted.lower(abstract_state(state, shardings), shapes).compile()
    row["compile_s"] = time.perf_counter() - t0
    mem = common.compiled_memory_bytes(compiled)
    if mem is not None:
        row["memory_gib"] = mem["total"] / 2**30
        row["temp_gib"] = mem["temp"] / 2**30
        free = common.available_memory_bytes()
        if free is not None and mem["total"] > 0.9 * free:
            row["status"] = f"skipped: needs {mem['total'] / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
            return row
    xla_flops = common.compiled_flops(compiled)
    row["xla_flops_per_step"] = xla_flops

    holder = {"state": state}
    device_batch = shd.shard_batch(batch, mesh)

    def one_step():
        holder["state"], metrics = compiled(holder["state"], device_batch)
        return metrics["loss"]

    t0 = time.perf_counter()
    loss = float(jax.block_until_ready(one_step()))
    first = time.perf_counter() - t0
    row["first_step_s"] = first
    if not np.isfinite(loss):
        row["status"] = f"error: non-finite loss {loss}"
        return row
    if first * (args.warmup + args.steps) > args.max_seconds:  # compile time is not counted: load-dependent
        row["status"] = (f"skipped: first step {first:.1f} s x {args.warmup + args.steps} steps > "
                         f"--max-seconds={args.max_seconds:g}")
        row["step_s"] = first  # a single (warm, compiled) step: still a usable estimate
    else:
        t = common.time_fn(one_step, warmup=max(0, args.warmup - 1), repeats=args.steps,
                           max_seconds=args.max_seconds)
        row.update(step_s=t["median_s"], step_s_min=t["min_s"], timed_steps=len(t["times_s"]), status="ok")

    flops_tok = flops_per_token(cfg, length, length)
    row["model_flops_per_token"] = flops_tok
    row["tokens_per_s"] = b * length / row["step_s"]  # target tokens (the unit of flops_per_token)
    row["src_tgt_tokens_per_s"] = 2 * b * length / row["step_s"]
    row["achieved_flops_per_s"] = flops_tok * row["tokens_per_s"]
    row["mfu"] = row["achieved_flops_per_s"] / peak
    if xla_flops:
        row["xla_flops_per_s"] = xla_flops / row["step_s"]
    if known_peak:
        row["mfu_datasheet"] = row["achieved_flops_per_s"] / known_peak
    same = common.matmul_flops_per_s(b * length, cfg.d_model, cfg.d_ff, args.dtype, repeats=3)
    row["matmul_same_size_flops_per_s"] = same["flops_per_s"]
    row["vs_matmul"] = row["achieved_flops_per_s"] / same["flops_per_s"]
    del holder, state, compiled, device_batch
    return row


COLUMNS = [("variant", "variant", ""), ("src_len", "L", ""), ("batch", "B", ""), ("step_s", "step s", ".3f"),
           ("tokens_per_s", "tgt tok/s", ",.0f"), ("achieved_flops_per_s", "GFLOP/s", ""),
           ("mfu", "MFU", ".3f"), ("vs_matmul", "vs mm", ".3f"), ("memory_gib", "GiB", ".2f"),
           ("compile_s", "compile s", ".1f"), ("status", "status", "")]


def table(rows) -> str:
    shown = [{**r, "achieved_flops_per_s": (f"{r['achieved_flops_per_s'] / 1e9:.1f}"
                                             if r.get("achieved_flops_per_s") else None)} for r in rows]
    return common.format_table(shown, COLUMNS)


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        pts = [(r["src_len"], r["tokens_per_s"], r["mfu"]) for r in rows
               if r["variant"] == variant and r.get("tokens_per_s")]
        if not pts:
            continue
        x, tps, mfu = zip(*pts)
        axes[0].plot(x, tps, "o-", label=variant)
        axes[1].plot(x, mfu, "o-", label=variant)
    for ax, label in zip(axes, ("target tokens / s", "MFU (vs measured matmul)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("source = target length")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> dict[str, Any]:
    import jax

    args = parse_args(argv)
    backend = jax.default_backend()
    args.dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    json_path = args.json or os.path.join(os.path.dirname(__file__), "results", f"train_throughput_{backend}.json")
    csv_path = args.csv or os.path.splitext(json_path)[0] + ".csv"
    env = common.environment()
    known_peak = common.known_peak_flops(env["device_kind"]) if backend != "cpu" else None
    side = args.peak_matmul or (2048 if backend == "cpu" else 8192)
    peaks = [common.matmul_flops_per_s(side, side, side, args.dtype)]
    print(f"{env['device_kind']} ({backend}), jax {env['jax']}; measured {side}³ {args.dtype} matmul: "
          f"{peaks[0]['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    cfg0 = model_config(args, args.variants[0], max(args.lengths))
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "csv", "png")}
    settings.update(model=dict(preset=args.preset, num_encoder_layers=cfg0.num_encoder_layers,
                               num_decoder_layers=cfg0.num_decoder_layers, d_model=cfg0.d_model,
                               num_heads=cfg0.num_heads, d_ff=cfg0.d_ff, vocab_size=cfg0.vocab_size,
                               dropout_rate=cfg0.dropout_rate, dtype=cfg0.dtype, activation=cfg0.activation),
                    cross_attention="Dense()", command="python -m benchmarks.train_throughput " + " ".join(argv or sys.argv[1:]))
    rows: list[dict[str, Any]] = []
    too_slow: dict[str, str] = {}

    def result() -> dict[str, Any]:
        peak = max(p["flops_per_s"] for p in peaks)
        return {"benchmark": "train_throughput", "environment": env, "settings": settings,
                "peak": {"measured_matmul": peaks, "peak_flops_per_s": peak, "known_bf16_peak": known_peak,
                         "note": "MFU divides by the measured matmul peak (the larger of the before/after runs)"},
                "rows": rows}

    def save():
        res = result()
        for r in rows:  # re-normalise MFU by the final (largest) measured peak
            if r.get("achieved_flops_per_s"):
                r["mfu"] = r["achieved_flops_per_s"] / res["peak"]["peak_flops_per_s"]
        common.write_json(json_path, res)
        common.write_csv(csv_path, rows)

    for length in args.lengths:  # variants side by side at each length: same machine load
        for variant in args.variants:
            if variant in too_slow:
                rows.append(dict(variant=variant, src_len=length, tgt_len=length, status=too_slow[variant]))
                continue
            try:
                row = run_config(args, variant, length, max(p["flops_per_s"] for p in peaks), known_peak)
            except Exception as err:  # noqa: BLE001 - a config that fails is recorded, the sweep goes on
                msg = str(err).splitlines()[0][:300]
                oom = "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()
                row = dict(variant=variant, src_len=length, tgt_len=length,
                           status=("skipped: out of memory: " if oom else f"error: {type(err).__name__}: ") + msg)
            if row.get("status", "").startswith("skipped"):
                too_slow[variant] = f"skipped: {variant} at L={length} was already skipped ({row['status'][9:]})"
            rows.append(row)
            r = row
            print(f"{variant:>12} L={length:>5} B={r.get('batch', '-')}: "
                  + (f"{r['step_s']:.3f} s/step, {r['tokens_per_s']:,.0f} tgt tok/s, MFU {r['mfu']:.3f}, "
                     f"{r.get('memory_gib', 0):.2f} GiB, compile {r['compile_s']:.1f} s " if r.get("step_s") else "")
                  + f"[{r['status']}]", flush=True)
            save()
    peaks.append(common.matmul_flops_per_s(side, side, side, args.dtype))
    save()
    res = result()
    print(f"peak (measured {side}³ matmul, before/after): "
          + " / ".join(f"{p['flops_per_s'] / 1e9:.1f}" for p in peaks) + " GFLOP/s")
    print(table(rows))
    if args.png:
        plot(rows, args.png)
    print(f"wrote {json_path} and {csv_path}" + (f" and {args.png}" if args.png else ""))
    return res


if __name__ == "__main__":
    main()
