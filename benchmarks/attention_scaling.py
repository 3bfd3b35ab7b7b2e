"""How attention time and memory scale with sequence length: dense vs Flash vs Windowed vs BlockSparse
vs Performer.

For each variant and length n (512, 1024, ... by default) it compiles forward and forward+backward
ahead of time, reads the peak memory from the compiled program (argument + output + temp bytes),
skips the point if that exceeds --memory-budget-gib, and otherwise times the compiled calls (median
of --repeats after one warm-up call, `block_until_ready`). A variant stops growing once a length
took longer than --max-seconds (a call that slow is timed once: its warm-up is the sample).

Also reported: executed FLOPs from XLA's cost analysis (how it counts a scan body is up to XLA,
so trust it for the dense variants more than for the blockwise ones), useful FLOPs
(4·n·visible_keys·H·N forward, 3x that for forward+backward), achieved useful FLOP/s as a
fraction of a float matmul measured in the same run, the log-log slope of time vs n per variant,
and the max error against dense at small n (under each variant's own mask; for Performer, whose
pattern is dense, it is the random-feature approximation error, and its useful FLOPs count the
feature-space products as `Performer.keys_per_query` keys per query).
The machine is shared and noisy: compare ratios within one run.

    python -m benchmarks.attention_scaling --lengths 512,1024,2048 --variants dense,windowed
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from transformer_jax.attention import BlockSparse, Dense, Flash, Performer, Windowed, masked_softmax_attention

ALL_VARIANTS = ("dense", "flash", "windowed", "block_sparse", "performer", "performer_segments", "performer_packed",
                "jax_nn", "jax_nn_local", "flax", "cudnn")


def _ones(x):
    return jnp.ones(x.shape[:2], jnp.int32)


def _halves(x):  # [B, n] segment ids: two packed examples of n / 2 tokens
    return jnp.broadcast_to(1 + (jnp.arange(x.shape[1]) >= x.shape[1] // 2), x.shape[:2]).astype(jnp.int32)


def make_variants(args) -> dict[str, tuple[Callable, Callable[[int], float]]]:
    """name -> (attention fn(q, k, v), visible keys per query averaged over rows, as a fn of n)."""
    w, causal = args.window, args.causal
    sparse = BlockSparse(args.block_sparse_block, 3, 2, 3, seed=0)
    performer = Performer(args.performer_features, chunk_size=args.performer_chunk)
    dense_keys = lambda n: (n + 1) / 2 if causal else float(n)  # noqa: E731

    def window_keys(n):  # exact count of |i - j| <= w (or 0 <= i - j <= w) over [n, n]
        m = min(w, n - 1)
        total = n * (m + 1) - m * (m + 1) // 2
        return (total if causal else 2 * total - n) / n

    def sparse_keys(n):  # exact count from the block table, without materialising [n, n]
        b = sparse.block_size
        nb = -(-n // b)
        size = np.minimum(b, n - b * np.arange(nb))  # rows in each block (the last may be short)
        g = min(sparse.global_blocks, nb)
        if causal:  # exact only up to the diagonal blocks; fine for a FLOP count
            total = sum(size[i] * (b * i + (size[i] + 1) / 2) for i in range(g))
        else:
            total = size[:g].sum() * n
        table = sparse.block_table(nb, causal)
        for i, row in zip(range(g, nb), table):
            cols = row[row >= 0]
            full = size[cols].sum()
            total += size[i] * (full - ((size[i] - 1) / 2 if causal else 0))
        return total / n

    def jnn(local):
        def f(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla",
                                                local_window_size=(w, 0 if causal else w) if local else None)
        return f

    def flax_attn(q, k, v):
        import flax.linen as nn
        mask = nn.make_causal_mask(jnp.ones(q.shape[:2]), dtype=bool) if causal else None
        return nn.dot_product_attention(q, k, v, mask=mask)

    def cudnn(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")

    return {
        "dense": (lambda q, k, v: Dense()(q, k, v, causal=causal), dense_keys),
        "flash": (lambda q, k, v: Flash(args.flash_block)(q, k, v, causal=causal), dense_keys),
        "windowed": (lambda q, k, v: Windowed(w)(q, k, v, causal=causal), window_keys),
        "block_sparse": (lambda q, k, v: sparse(q, k, v, causal=causal), sparse_keys),
        "performer": (lambda q, k, v: performer(q, k, v, causal=causal), lambda n: performer.keys_per_query(n, causal)),
        # with segment ids: one example per row (as an encoder passes them; the global sum, chosen at
        # run time), and two packed examples per row (the chunked scans)
        "performer_segments": (lambda q, k, v: performer(q, k, v, causal=causal, q_segment_ids=_ones(q),
                                                         kv_segment_ids=_ones(k)),
                               lambda n: performer.keys_per_query(n, causal)),
        "performer_packed": (lambda q, k, v: performer(q, k, v, causal=causal, q_segment_ids=_halves(q),
                                                       kv_segment_ids=_halves(k)),
                             lambda n: performer.keys_per_query(n, causal)),
        "jax_nn": (jnn(False), dense_keys),
        "jax_nn_local": (jnn(True), window_keys),
        "flax": (flax_attn, dense_keys),
        "cudnn": (cudnn, dense_keys),
    }


def reference_mask(name: str, n: int, args) -> np.ndarray:
    if name == "performer_packed":  # the two examples see only themselves
        half = np.arange(n) >= n // 2
        return Dense().mask(n, n, args.causal) & (half[:, None] == half[None, :])
    if name in ("windowed", "jax_nn_local"):
        return Windowed(args.window).mask(n, n, args.causal)
    if name == "block_sparse":
        return BlockSparse(args.block_sparse_block, 3, 2, 3, seed=0).mask(n, n, args.causal)
    return Dense().mask(n, n, args.causal)


def _time_compiled(compiled, inputs, repeats: int, max_seconds: float) -> dict[str, Any]:
    t = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))  # warm-up (already compiled: a pure execution)
    warm = time.perf_counter() - t
    if warm > max_seconds:
        return {"median_s": warm, "samples": 1}
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "samples": len(times)}


def slope(ns, ts) -> float | None:
    """Least-squares slope of log(time) against log(n)."""
    if len(ns) < 2:
        return None
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def run(args) -> dict[str, Any]:
    env = common.environment()
    on_gpu = jax.default_backend() == "gpu"
    dtype = jnp.dtype(args.dtype)
    variants = make_variants(args)
    names = [v for v in args.variants if v != "cudnn" or on_gpu]
    budget = args.memory_budget_gib * 2**30
    mm = common.matmul_flops_per_s(args.matmul_size, args.matmul_size, args.matmul_size, args.dtype)
    print(f"matmul {args.matmul_size}^3 {args.dtype}: {mm['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    B, N, H = args.batch, args.heads, args.head_dim
    records, stopped = [], {}
    for n in args.lengths:
        keys = jax.random.split(jax.random.PRNGKey(n), 3)
        q, k, v = (jax.random.normal(kk, (B, n, N, H), dtype) for kk in keys)
        for name in names:
            fn, visible = variants[name]
            rec = {"variant": name, "n": n, "batch": B, "heads": N, "head_dim": H, "dtype": args.dtype,
                   "window": args.window, "causal": args.causal}
            records.append(rec)
            if name in stopped:
                rec["skipped"] = stopped[name]
                continue
            useful_fwd = 4.0 * n * visible(n) * H * N * B
            rec["useful_flops_fwd"], rec["useful_flops_fwd_bwd"] = useful_fwd, 3 * useful_fwd
            fwd = jax.jit(fn)
            fwd_bwd = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * v),
                                                 argnums=(0, 1, 2)))
            try:
                compiled = {"fwd": fwd.lower(q, k, v).compile(), "fwd_bwd": fwd_bwd.lower(q, k, v).compile()}
            except Exception as e:  # noqa: BLE001 - e.g. cuDNN rejecting a shape: record and move on
                rec["skipped"] = f"compile failed: {type(e).__name__}: {str(e)[:200]}"
                continue
            over = False
            for mode, c in compiled.items():
                mem = common.compiled_memory_bytes(c)
                rec[f"peak_bytes_{mode}"] = None if mem is None else mem["total"]
                rec[f"executed_flops_{mode}"] = common.compiled_flops(c)
                over |= mem is not None and mem["total"] > budget
            if over:
                rec["skipped"] = (f"memory: {rec['peak_bytes_fwd_bwd'] / 2**30:.1f} GiB > budget "
                                  f"{args.memory_budget_gib} GiB")
                stopped[name] = f"memory: a shorter length already exceeded the {args.memory_budget_gib} GiB budget"
                continue
            for mode, c in compiled.items():
                t = _time_compiled(c, (q, k, v), args.repeats, args.max_seconds)
                rec[f"time_s_{mode}"], rec[f"samples_{mode}"] = t["median_s"], t["samples"]
                rec[f"useful_flops_per_s_{mode}"] = rec[f"useful_flops_{mode}"] / t["median_s"]
                rec[f"matmul_fraction_{mode}"] = rec[f"useful_flops_per_s_{mode}"] / mm["flops_per_s"]
            if n <= args.error_max_n:
                want = masked_softmax_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                                v.astype(jnp.float32), jnp.asarray(reference_mask(name, n, args)))
                rec["max_abs_err_vs_dense"] = float(jnp.max(jnp.abs(compiled["fwd"](q, k, v).astype(jnp.float32) - want)))
            print(f"{name:>13} n={n:>6}  fwd {rec['time_s_fwd']:8.4f} s  fwd+bwd {rec['time_s_fwd_bwd']:8.4f} s  "
                  f"peak {rec['peak_bytes_fwd_bwd'] / 2**20:9.1f} MiB  "
                  f"{100 * rec['matmul_fraction_fwd_bwd']:5.1f}% of matmul", flush=True)
            if rec["time_s_fwd_bwd"] > args.max_seconds:
                stopped[name] = f"time: n={n} took {rec['time_s_fwd_bwd']:.1f} s > --max-seconds {args.max_seconds}"
    slopes = {}
    for name in names:
        pts = [(r["n"], r["time_s_fwd_bwd"]) for r in records if r["variant"] == name and "time_s_fwd_bwd" in r]
        big = [p for p in pts if p[0] >= args.slope_min_n]
        slopes[name] = {"all": slope(*zip(*pts)) if len(pts) > 1 else None,
                        f"n>={args.slope_min_n}": slope(*zip(*big)) if len(big) > 1 else None}
    ratios = {}
    for r in records:
        base = next((d for d in records if d["variant"] == "dense" and d["n"] == r["n"]), None)
        if r["variant"] != "dense" and base and "time_s_fwd_bwd" in base and "time_s_fwd_bwd" in r:
            ratios[f"{r['variant']}@{r['n']}"] = {
                "speedup_fwd_bwd_vs_dense": base["time_s_fwd_bwd"] / r["time_s_fwd_bwd"],
                "memory_ratio_dense_over": base["peak_bytes_fwd_bwd"] / r["peak_bytes_fwd_bwd"]}
    return {"environment": env, "settings": {k: v for k, v in vars(args).items() if k not in ("json", "csv", "png")},
            "matmul": mm, "slopes_fwd_bwd": slopes, "vs_dense": ratios, "records": records}


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5))
    variants = dict.fromkeys(r["variant"] for r in result["records"])
    for name in variants:
        rs = [r for r in result["records"] if r["variant"] == name and "time_s_fwd_bwd" in r]
        if rs:
            ax_t.plot([r["n"] for r in rs], [r["time_s_fwd_bwd"] for r in rs], "o-", label=name)
            ax_m.plot([r["n"] for r in rs], [r["peak_bytes_fwd_bwd"] / 2**20 for r in rs], "o-", label=name)
    s = result["settings"]
    for ax, title, unit in ((ax_t, "forward+backward time", "seconds"), (ax_m, "compiled peak memory", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    env = result["environment"]
    fig.suptitle(f"attention scaling: B={s['batch']} N={s['heads']} H={s['head_dim']} {s['dtype']} "
                 f"window={s['window']} causal={s['causal']} on {env['device_kind']} ({env['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--lengths", type=ints, default=[512 * 2**i for i in range(8)], help="comma-separated n")
    p.add_argument("--variants", type=lambda s: s.split(","), default=list(ALL_VARIANTS),
                   help=f"comma-separated subset of {','.join(ALL_VARIANTS)} (cudnn only runs on a GPU)")
    p.add_argument("--dtype", default="float32", help="bfloat16 on a GPU, float32 on a CPU")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--flash-block", type=int, default=512)
    p.add_argument("--block-sparse-block", type=int, default=64)
    p.add_argument("--performer-features", type=int, default=256)
    p.add_argument("--performer-chunk", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=30.0,
                   help="stop growing a variant after a length whose fwd+bwd took longer than this")
    p.add_argument("--memory-budget-gib", type=float, default=16.0)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--error-max-n", type=int, default=1024, help="check max error vs dense up to this n")
    p.add_argument("--slope-min-n", type=int, default=2048, help="also fit the slope over n >= this")
    p.add_argument("--json", default=f"benchmarks/results/attention_scaling_{jax.default_backend()}.json")
    p.add_argument("--csv", default=f"benchmarks/results/attention_scaling_{jax.default_backend()}.csv")
    p.add_argument("--png", default=f"benchmarks/results/attention_scaling_{jax.default_backend()}.png")
    args = p.parse_args(argv)
    unknown = set(args.variants) - set(ALL_VARIANTS)
    if unknown:
        p.error(f"unknown --variants {sorted(unknown)}; choose from {','.join(ALL_VARIANTS)}")
    result = run(args)
    for path in (args.json, args.csv, args.png):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.json:
        common.write_json(args.json, result)
    if args.csv:
        common.write_csv(args.csv, result["records"])
    if args.png:
        plot(result, args.png)
    for name, s in result["slopes_fwd_bwd"].items():
        print(f"slope {name:>13}: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items() if v is not None))
    for key, r in result["vs_dense"].items():
        print(f"{key:>22}: {r['speedup_fwd_bwd_vs_dense']:7.1f}x faster, {r['memory_ratio_dense_over']:6.1f}x less memory")


if __name__ == "__main__":
    main()
