"""Our whole train step against flax `examples/wmt`'s, side by side in one process.

The peer is the Flax WMT example's model (`examples/wmt/models.py` of github.com/google/flax), loaded
from a checkout you name (it is not shipped here):

    git clone --depth 1 https://github.com/google/flax /tmp/flax
    python -m benchmarks.peer_wmt --peer-models /tmp/flax/examples/wmt/models.py

Both sides build the same network: 6+6 pre-LN layers, d_model 512, 8 heads, d_ff 2048, shared
embeddings with logits through the embedding, sinusoidal positions, dropout 0.1, float32, batch 8 ×
length 256 (no padding), label smoothing 0.1, AdamW (β 0.9/0.98, ε 1e-9, no clipping), one jitted
step with the state donated. Ours is the library's `make_train_step` (the step `train()` runs, with
its loss, accuracy and gradient-norm metrics). The peer's step is written here after its
`train.py`: its `compute_weighted_cross_entropy` (one-hot soft targets) and weighted accuracy, with
`value_and_grad` and `optax.adamw`. The peer has attention dropout as well (its default 0.1; ours has
none): `--peer-attention-dropout 0` also times it without, the like-for-like row.

Rounds alternate (ours, peer, ours, ...) so that drift in the machine's speed hits both; each
round times `--steps` steps, and the median over rounds is reported. Model FLOPs (the same network,
`transformer_jax.model.flops_per_token`) over step time, divided by a square float32 matmul measured
in the same run (before and after; the larger), gives each side's share of the matmul peak.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks import common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_wmt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-models", required=True, help="path to flax's examples/wmt/models.py")
    p.add_argument("--peer-revision", default="", help="recorded with the results (e.g. the flax commit)")
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--vocab-size", type=int, default=32_000, help="the peer's default vocabulary")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256, help="source = target length")
    p.add_argument("--peer-attention-dropout", default="0.1,0",
                   help="comma-separated attention dropout rates of the peer rows (its default: 0.1)")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    p.add_argument("--steps", type=int, default=3, help="steps per side per round")
    p.add_argument("--peak-matmul", type=int, default=2048, help="side of the square peak matmul")
    p.add_argument("--json", default=None, help="result JSON (default benchmarks/results/peer_wmt_<backend>.json)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.peer_models):
        p.error(f"--peer-models {args.peer_models!r} is not a file; clone github.com/google/flax and pass "
                "flax/examples/wmt/models.py")
    try:
        args.peer_attention_dropout = [float(x) for x in args.peer_attention_dropout.split(",") if x.strip()]
    except ValueError:
        p.error(f"--peer-attention-dropout={args.peer_attention_dropout!r}: comma-separated rates in [0, 1)")
    if not args.peer_attention_dropout or not all(0 <= r < 1 for r in args.peer_attention_dropout):
        p.error(f"--peer-attention-dropout={args.peer_attention_dropout!r}: rates in [0, 1)")
    for name in ("layers", "d_model", "heads", "d_ff", "vocab_size", "batch", "length", "rounds", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    return args


def ours(args):
    """(step, state, batch, model config, mesh) of the library's train step."""
    import jax
    import optax

    from transformer_jax import sharding as shd
    from transformer_jax.config import base
    from transformer_jax.model import Transformer
    from transformer_jax.train.optim import make_optimizer
    from transformer_jax.train.state import create_train_state
    from transformer_jax.train.step import StepConfig, jit_train_step, make_train_step

    cfg = base(num_encoder_layers=args.layers, num_decoder_layers=args.layers, d_model=args.d_model,
               num_heads=args.heads, d_ff=args.d_ff, vocab_size=args.vocab_size, max_len=args.length,
               norm_position="pre", dropout_rate=0.1)
    rng = np.random.default_rng(0)
    tokens = lambda: rng.integers(4, args.vocab_size, (args.batch, args.length), dtype=np.int32)  # noqa: E731
    batch = {"src": tokens(), "tgt_in": tokens(), "tgt_out": tokens()}
    shapes = {k: _shape(v) for k, v in batch.items()}
    mesh = shd.make_mesh(devices=jax.devices()[:1])  # one device, like the peer's step
    model = Transformer(cfg)
    schedule = optax.constant_schedule(1e-4)
    tx = make_optimizer("adamw", schedule, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, clip_norm=None)
    state, shardings = create_train_state(model, tx, shapes, mesh, seed=0)
    step = make_train_step(model, tx, schedule, StepConfig(label_smoothing=0.1))
    with shd.activate(mesh):
        jitted, _ = jit_train_step(step, shardings, shapes, mesh)
    return jitted, state, shd.shard_batch(batch, mesh), cfg, mesh


def peer(args, models, attention_dropout: float):
    """(step, state, batch) of the peer's model under a step written after its train.py."""
    import jax
    import jax.numpy as jnp
    import optax

    pcfg = models.TransformerConfig(
        vocab_size=args.vocab_size, output_vocab_size=args.vocab_size, share_embeddings=True,
        logits_via_embedding=True, dtype=jnp.float32, emb_dim=args.d_model, num_heads=args.heads,
        num_layers=args.layers, qkv_dim=args.d_model, mlp_dim=args.d_ff, max_len=args.length,
        dropout_rate=0.1, attention_dropout_rate=attention_dropout, deterministic=False)
    model = models.Transformer(pcfg)
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.integers(4, args.vocab_size, (args.batch, args.length), dtype=np.int32))
    targets = jnp.asarray(rng.integers(4, args.vocab_size, (args.batch, args.length), dtype=np.int32))
    init_cfg = pcfg.replace(deterministic=True)
    params = jax.jit(models.Transformer(init_cfg).init)(jax.random.key(0), inputs, targets)["params"]
    tx = optax.adamw(1e-4, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0)
    state = {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": jax.random.key(1)}
    smoothing = 0.1

    def loss_fn(p, inputs, targets, rng):
        logits = model.apply({"params": p}, inputs, targets, rngs={"dropout": rng})
        weights = (targets > 0).astype(jnp.float32)
        vocab = logits.shape[-1]
        confidence, low = 1.0 - smoothing, smoothing / (vocab - 1)
        constant = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
        soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
        loss = (-jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1) - constant) * weights
        return loss.sum() / weights.sum(), (logits, weights)

    def step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        (loss, (logits, weights)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch["inputs"], batch["targets"], rng)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        accuracy = ((jnp.argmax(logits, -1) == batch["targets"]) * weights).sum() / weights.sum()
        new = {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt,
               "step": state["step"] + 1}
        return new, {"loss": loss, "accuracy": accuracy}

    return jax.jit(step, donate_argnums=0), state, {"inputs": inputs, "targets": targets}


def _shape(x):
    import jax

    return jax.ShapeDtypeStruct(x.shape, x.dtype)


class Side:
    """One contender: a jitted step, its state (threaded through), its batch."""

    def __init__(self, name: str, step, state, batch, mesh=None):
        self.name, self.step, self.state, self.batch, self.mesh = name, step, state, batch, mesh
        self.times: list[float] = []

    def run(self, steps: int) -> float:
        import contextlib

        import jax

        from transformer_jax import sharding as shd

        ctx = shd.activate(self.mesh) if self.mesh is not None else contextlib.nullcontext()
        with ctx:
            t = time.perf_counter()
            for _ in range(steps):
                self.state, metrics = self.step(self.state, self.batch)
            jax.block_until_ready(metrics["loss"])
        return (time.perf_counter() - t) / steps


def main(argv=None) -> dict[str, Any]:
    import jax

    from transformer_jax.model import flops_per_token

    args = parse_args(argv)
    backend = jax.default_backend()
    json_path = args.json or os.path.join(os.path.dirname(__file__), "results", f"peer_wmt_{backend}.json")
    env = common.environment()
    side = args.peak_matmul
    peaks = [common.matmul_flops_per_s(side, side, side, "float32")]
    models = common.load_module(args.peer_models, "_peer_wmt_models")
    step, state, batch, cfg, mesh = ours(args)
    sides = [Side("ours", step, state, batch, mesh)]
    for rate in args.peer_attention_dropout:
        sides.append(Side(f"flax_wmt (attention dropout {rate:g})", *peer(args, models, rate)))
    compile_s = {}
    for s in sides:  # compile + one warm step each
        t = time.perf_counter()
        s.run(1)
        compile_s[s.name] = time.perf_counter() - t
        print(f"{s.name}: first step (compile included) {compile_s[s.name]:.1f} s", flush=True)
    for r in range(args.rounds):
        for s in (sides if r % 2 == 0 else sides[::-1]):
            s.times.append(s.run(args.steps))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{s.name} {s.times[-1]:.3f} s" for s in sides), flush=True)
    peaks.append(common.matmul_flops_per_s(side, side, side, "float32"))
    peak = max(p["flops_per_s"] for p in peaks)
    flops_step = flops_per_token(cfg, args.length, args.length) * args.batch * args.length
    ours_s = statistics.median(sides[0].times)
    rows = []
    for s in sides:
        t = statistics.median(s.times)
        rows.append({"side": s.name, "step_s": t, "step_s_min": min(s.times), "step_s_rounds": s.times,
                     "first_step_s": compile_s[s.name], "model_flops_per_step": flops_step,
                     "flops_per_s": flops_step / t, "vs_matmul_peak": flops_step / t / peak,
                     "ours_speedup": t / ours_s})
    with open(args.peer_models, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    settings["command"] = "python -m benchmarks.peer_wmt " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"benchmark": "peer_wmt", "environment": {**env, "load_average_at_start": os.getloadavg()},
              "settings": settings, "peer": {"models_py_sha256": digest, "revision": args.peer_revision},
              "peak": {"measured_matmul": peaks, "peak_flops_per_s": peak}, "rows": rows}
    common.write_json(json_path, result)
    print(common.format_table(rows, [("side", "side", ""), ("step_s", "step s", ".3f"),
                                     ("step_s_min", "min s", ".3f"), ("vs_matmul_peak", "of matmul peak", ".3f"),
                                     ("ours_speedup", "ours faster by", ".2f")]))
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s; wrote {json_path}")
    return result


if __name__ == "__main__":
    main()
