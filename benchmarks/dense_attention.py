"""`Dense` against `jax.nn.dot_product_attention` (its XLA implementation), fwd+bwd, one process.

The target (issue 13): `Dense` at least as fast as JAX's own attention at every length. Both get
q, k, v [B, T, N, H] float32 and the loss sum(out^2); the rounds alternate between the two so
drift in the machine's load hits both, and each figure is the minimum over rounds.

    python -m benchmarks.dense_attention                      # lengths 1024 2048 4096
    python -m benchmarks.dense_attention --lengths 512 1024 --json /tmp/d.json
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from benchmarks import common
from transformer_jax.attention import Dense

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _grad_fn(attend):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) ** 2), argnums=(0, 1, 2)))


def measure(n: int, causal: bool, *, batch: int, heads: int, head_dim: int, rounds: int) -> dict:
    q, k, v = (jax.random.normal(jax.random.key(i), (batch, n, heads, head_dim)) for i in range(3))
    fns = {"dense": _grad_fn(lambda q, k, v: Dense()(q, k, v, causal=causal)),
           "jax_nn": _grad_fn(lambda q, k, v: jax.nn.dot_product_attention(
               q, k, v, is_causal=causal, implementation="xla"))}
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], common.time_fn(lambda: fn(q, k, v), repeats=3)["min_s"])
    return {"n": n, "causal": causal, "dense_s": best["dense"], "jax_nn_s": best["jax_nn"],
            "dense_over_jax_nn": best["dense"] / best["jax_nn"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dense_attention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=os.path.join(RESULTS, f"dense_attention_{jax.default_backend()}.json"))
    args = p.parse_args(argv)
    if any(n <= 0 for n in args.lengths):
        p.error(f"--lengths must be positive; got {args.lengths}")
    rows = [measure(n, causal, batch=args.batch, heads=args.heads, head_dim=args.head_dim, rounds=args.rounds)
            for n in args.lengths for causal in (False, True)]
    for r in rows:
        print(f"n={r['n']:6d} {'causal' if r['causal'] else 'bidir ':6s} Dense {r['dense_s'] * 1e3:9.1f} ms   "
              f"jax.nn {r['jax_nn_s'] * 1e3:9.1f} ms   ratio {r['dense_over_jax_nn']:.3f}", flush=True)
    common.write_json(args.json, {"benchmark": "dense_attention", "environment": common.environment(),
                                  "settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
