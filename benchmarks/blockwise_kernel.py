"""The blockwise kernel (`Windowed`, `BlockSparse`) against the machine's matmul peak, fwd+bwd.

For each pattern and each `--chunk-rows` (query rows per step of the kernel's chunk loop,
`blockwise.CHUNK_ROWS`), the rounds alternate between the settings so that drift in the machine's
load hits all of them; each figure is the minimum over rounds. Reported per row:

- executed matmul FLOPs: every score tile the kernel computes (masked entries included) times the
  seven tile matmuls of a fwd+bwd (forward QK, PV; backward recomputed QK, dV, dP, dQ, dK), each
  2·bq·bk·H per head: `2 * 7 * tiles * bq * bk * H * N * B`;
- useful FLOPs: 3 × 4·n·visible_keys·H·N·B, as in `attention_scaling`;
- both as a fraction of a square float32 matmul measured in the same run (before and after; the
  larger), and the same for an isolated batched matmul of the kernel's own tile shape, the ceiling
  any kernel made of such tiles can reach here.

    python -m benchmarks.blockwise_kernel                       # n = 16384, chunk rows 4096 and 512
    python -m benchmarks.blockwise_kernel --n 32768 --chunk-rows 256,512,1024 --json /tmp/k.json
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from benchmarks import common
from transformer_jax.attention import BlockSparse, Windowed, blockwise
from transformer_jax.attention.blockwise import cdiv

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MATMULS_FWD_BWD = 7  # QK, PV forward; QK (recomputed), dV, dP, dQ, dK backward


def tiles(spec, n: int) -> tuple[int, int, float]:
    """(score-tile elements the kernel computes per head, tile rows, visible keys per query) for a
    bidirectional pattern over length n."""
    if isinstance(spec, Windowed):
        b, table = spec.block_table(n)
        cols = int((table >= 0).any(0).sum())
        return cdiv(n, b) * cols * b * b, b, spec.keys_per_query(n, False)
    b, nb = spec.block_size, cdiv(n, spec.block_size)
    g = min(spec.global_blocks, nb)
    table = spec.block_table(nb)
    cols = int((table >= 0).any(0).sum())
    # global query rows [0, g*b) go through Flash (block 512): every key tile
    return (nb - g) * cols * b * b + g * b * n, b, spec.keys_per_query(n, False)


def tile_matmul_flops_per_s(rows: int, head_dim: int, batch: int, repeats: int = 5) -> float:
    """FLOP/s of an isolated batched [rows, head_dim] @ [head_dim, rows] matmul: a score tile."""
    a = jax.random.normal(jax.random.key(0), (batch, rows, head_dim))
    b = jax.random.normal(jax.random.key(1), (batch, head_dim, rows))
    f = jax.jit(lambda a, b: jnp.einsum("bqh,bhk->bqk", a, b))
    t = common.time_fn(lambda: f(a, b), warmup=2, repeats=repeats)["min_s"]
    return 2.0 * batch * rows * rows * head_dim / t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.blockwise_kernel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16384, help="sequence length")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--block-size", type=int, default=64, help="BlockSparse block size (3 window, 2 global, 3 random)")
    p.add_argument("--chunk-rows", default="4096,512", help="comma-separated query rows per chunk step")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=os.path.join(RESULTS, f"blockwise_kernel_{jax.default_backend()}.json"))
    args = p.parse_args(argv)
    chunk_rows = [int(c) for c in args.chunk_rows.split(",")]
    if args.n <= 0 or any(c <= 0 for c in chunk_rows):
        p.error(f"--n and --chunk-rows must be positive; got {args.n} and {args.chunk_rows!r}")
    specs = {"windowed": Windowed(args.window), "block_sparse": BlockSparse(args.block_size, 3, 2, 3, seed=0)}
    B, N, H, n = args.batch, args.heads, args.head_dim, args.n
    q, k, v = (jax.random.normal(jax.random.key(i), (B, n, N, H)) for i in range(3))

    peaks = [common.matmul_flops_per_s(2048, 2048, 2048, "float32")["flops_per_s"]]
    compiled, saved = {}, blockwise.CHUNK_ROWS
    try:
        for name, spec in specs.items():
            for c in chunk_rows:
                blockwise.CHUNK_ROWS = c  # read at trace time
                f = jax.jit(jax.grad(lambda q, k, v, spec=spec: jnp.sum(spec(q, k, v) * v), argnums=(0, 1, 2)))
                compiled[name, c] = f.lower(q, k, v).compile()
    finally:
        blockwise.CHUNK_ROWS = saved
    best = {key: float("inf") for key in compiled}
    for _ in range(args.rounds):
        for key, fn in compiled.items():
            best[key] = min(best[key], common.time_fn(lambda: fn(q, k, v), repeats=2)["min_s"])
    tile_rates = {}
    for name, spec in specs.items():
        _, rows, _ = tiles(spec, n)
        tile_rates[name] = tile_matmul_flops_per_s(rows, H, batch=max(1, 512 // rows) * N * B)
    peaks.append(common.matmul_flops_per_s(2048, 2048, 2048, "float32")["flops_per_s"])
    peak = max(peaks)

    rows = []
    for (name, c), t in best.items():
        elems, tile_rows, keys = tiles(specs[name], n)
        executed = 2.0 * MATMULS_FWD_BWD * elems * H * N * B
        useful = 3 * 4.0 * n * keys * H * N * B
        rows.append({"pattern": name, "n": n, "chunk_rows": c, "fwd_bwd_s": t, "tile_rows": tile_rows,
                     "executed_flops": executed, "useful_flops": useful,
                     "executed_vs_peak": executed / t / peak, "useful_vs_peak": useful / t / peak,
                     "tile_matmul_vs_peak": tile_rates[name] / peak})
        print(f"{name:>12} n={n} chunk_rows={c:5d}  {t * 1e3:8.1f} ms  executed {executed / t / peak:6.1%}  "
              f"useful {useful / t / peak:6.1%} of the matmul peak  (isolated {tile_rows}-row tile matmul: "
              f"{tile_rates[name] / peak:.1%})", flush=True)
    result = {"benchmark": "blockwise_kernel", "environment": common.environment(), "settings": vars(args),
              "peak": {"measured_matmul": peaks, "peak_flops_per_s": peak}, "rows": rows}
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
