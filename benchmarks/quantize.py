"""Weight-only quantization side by side: float32 vs bfloat16 vs int8 (per output channel).

For each variant, in one run on one machine: parameter bytes, CPU latency of a forward pass and of
greedy generation (jitted, the int8 scales multiplied in inside the program; the variants' timed
calls interleaved round by round, median reported), and quality:
- translation: corpus BLEU (beam search, the config's decode settings) on the test split of the
  default task `tjax_numbers`, from a trained workdir
  (`transformer-jax train --config configs/default.py --workdir /tmp/wd_default`, ~6 min on 2 cores);
- classification: accuracy of a small `EncoderClassifier` trained here, in seconds, on a synthetic
  task (is the majority of a sequence's tokens from the lower half of the vocabulary?), and the
  fraction of its predictions that agree with float32.

    python -m benchmarks.quantize --workdir /tmp/wd_default
    python -m benchmarks.quantize --quick     # smoke: no workdir, tiny classifier

Writes benchmarks/results/quantize_cpu.json (device, versions, date included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

from benchmarks import common

VARIANTS = ("float32", "bfloat16", "int8", "int8+embeddings")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/wd_default", help="trained default-task workdir ('' to skip BLEU)")
    p.add_argument("--out", default="benchmarks/results/quantize_cpu.json")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (each times every variant once)")
    p.add_argument("--batch", type=int, default=32, help="rows per forward / generate call")
    p.add_argument("--bleu-examples", type=int, default=0, help="test examples for BLEU (0: the whole split)")
    p.add_argument("--cls-steps", type=int, default=300, help="training steps of the synthetic classifier")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny classifier, 2 rounds, no BLEU")
    return p.parse_args(argv)


def variants(variables) -> dict[str, Any]:
    from transformer_jax.quantization import quantize

    return {"float32": variables, "bfloat16": quantize(variables, "bfloat16"), "int8": quantize(variables, "int8"),
            "int8+embeddings": quantize(variables, "int8", embeddings=True)}


def nbytes(v) -> int:
    from transformer_jax.quantization import QuantizedVariables, tree_bytes

    return v.nbytes if isinstance(v, QuantizedVariables) else tree_bytes(v)


def kernel_bytes(v) -> int:
    """Bytes of the projection kernels (with their int8 scales)."""
    import jax

    from transformer_jax.quantization import QuantizedVariables

    tree = v.variables if isinstance(v, QuantizedVariables) else v
    return int(sum(x.nbytes for path, x in jax.tree_util.tree_leaves_with_path(tree)
                   if str(getattr(path[-1], "key", "")) in ("kernel", "kernel_scale")))


def interleaved(fns: dict[str, Any], repeats: int) -> dict[str, dict[str, float]]:
    """Warm each (compile), then `repeats` rounds timing every fn once per round: median and min."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    warm = {}
    for k, f in fns.items():
        t = time.perf_counter()
        common.block(f())
        warm[k] = time.perf_counter() - t
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            common.block(f())
            times[k].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "compile_and_first_s": warm[k]}
            for k, v in times.items()}


def latency(model, vs: dict[str, Any], forward_args: tuple, gen_inputs, gen_kwargs: dict | None,
            repeats: int) -> dict[str, Any]:
    import jax

    from transformer_jax.quantization import dequantize, generate

    fwd = jax.jit(lambda v, *a: model.apply(dequantize(v), *a))
    out = {"forward": interleaved({k: (lambda v=v: fwd(v, *forward_args)) for k, v in vs.items()}, repeats),
           # argument bytes hold the weights as stored; temp holds what XLA materialises (the scaled copies)
           "forward_compiled_memory": {k: common.compiled_memory_bytes(fwd.lower(v, *forward_args).compile())
                                       for k, v in vs.items()}}
    if gen_kwargs is not None:
        out["generate"] = interleaved({k: (lambda v=v: generate(model, v, gen_inputs, **gen_kwargs))
                                       for k, v in vs.items()}, repeats)
    return out


def translation(args) -> dict[str, Any]:
    """BLEU and latency of the trained default-task model in `args.workdir`."""
    import jax
    import numpy as np

    from transformer_jax.quantization import dequantize
    from transformer_jax.train import build, evaluate

    if not args.workdir or not build.has_checkpoint(args.workdir):
        return {"skipped": f"no trained workdir at {args.workdir!r}: run `transformer-jax train --config "
                           f"configs/default.py --workdir {args.workdir or '/tmp/wd_default'}` first"}
    config = build.load_config(args.workdir)
    if args.bleu_examples:
        config.decode.max_examples = args.bleu_examples
    s, state, step = build.restore_for_eval(config, args.workdir)
    variables = {"params": jax.device_get(state.params)}
    vs = variants(variables)
    result: dict[str, Any] = {"workdir": args.workdir, "step": int(step), "model": "Transformer (configs/default.py)",
                              "params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables))),
                              "variants": {}}
    for name, v in vs.items():
        t0 = time.time()
        bleu = evaluate.evaluate_bleu(s, dequantize(v)["params"], config.data.test_split)
        result["variants"][name] = {"param_bytes": nbytes(v), "kernel_bytes": kernel_bytes(v), "bleu": bleu["bleu"], "examples": bleu["examples"],
                                    "beam_size": bleu["beam_size"], "bleu_seconds": time.time() - t0,
                                    "sample": bleu["samples"][0] if bleu["samples"] else None}
        print(f"  translation {name}: BLEU {bleu['bleu']:.2f} ({bleu['examples']} examples)", flush=True)
    b, src_len = args.batch, config.data.max_src_len
    rng = np.random.default_rng(0)
    src = rng.integers(3, s.model.cfg.vocab_size, (b, src_len)).astype(np.int32)
    tgt = rng.integers(3, s.model.cfg.vocab_size, (b, config.data.max_tgt_len)).astype(np.int32)
    result["latency"] = latency(s.model, vs, (src, tgt), src, {"max_len": config.data.max_tgt_len}, args.repeats)
    result["latency"]["shapes"] = {"batch": b, "src_len": src_len, "tgt_len": config.data.max_tgt_len,
                                   "generate": "greedy, max_len = tgt_len"}
    return result


def synthetic_batch(rng, n: int, length: int, vocab: int):
    """Tokens in [3, vocab); label 1 when most tokens fall in the lower half of that range."""
    import numpy as np

    x = rng.integers(3, vocab, (n, length)).astype(np.int32)
    y = (np.sum(x < 3 + (vocab - 3) // 2, axis=1) * 2 > length).astype(np.int32)
    return x, y


def classification(args) -> dict[str, Any]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import transformer_jax as tj
    from transformer_jax.quantization import dequantize

    vocab, length = 35, 31  # odd length: no ties
    cfg = tj.tiny(vocab_size=vocab, d_model=64, num_heads=4, d_ff=256, num_encoder_layers=2, num_classes=2,
                  max_len=length, dropout_rate=0.0)
    model = tj.EncoderClassifier(cfg)
    rng = np.random.default_rng(1)
    steps = 20 if args.quick else args.cls_steps
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((2, length), jnp.int32))["params"])
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 2e-3, steps // 10 + 1, steps), weight_decay=0.0)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    t0 = time.time()
    for _ in range(steps):
        x, y = synthetic_batch(rng, 64, length, vocab)
        params, opt_state, value = step(params, opt_state, x, y)
    train_s = time.time() - t0
    x_test, y_test = synthetic_batch(np.random.default_rng(2), 512 if args.quick else 4096, length, vocab)
    vs = variants({"params": params})
    predict = jax.jit(lambda v, x: jnp.argmax(model.apply(dequantize(v), x), -1))
    preds = {k: np.asarray(predict(v, x_test)) for k, v in vs.items()}
    result = {"model": f"EncoderClassifier d_model 64, 2 layers, {tj.param_count(params):,} parameters",
              "task": f"majority of tokens in the lower half of [3, {vocab}), length {length}",
              "train_steps": steps, "train_seconds": train_s, "final_train_loss": float(value),
              "test_examples": len(y_test), "variants": {}}
    for k, v in vs.items():
        result["variants"][k] = {"param_bytes": nbytes(v), "kernel_bytes": kernel_bytes(v), "accuracy": float(np.mean(preds[k] == y_test)),
                                 "agreement_with_float32": float(np.mean(preds[k] == preds["float32"]))}
        print(f"  classifier {k}: accuracy {result['variants'][k]['accuracy']:.4f}", flush=True)
    result["latency"] = latency(model, vs, (x_test[: args.batch],), None, None, args.repeats)
    result["latency"]["shapes"] = {"batch": args.batch, "length": length}
    return result


def summary(result: dict[str, Any]) -> str:
    lines = []
    for part in ("translation", "classification"):
        r = result.get(part, {})
        if "variants" not in r:
            lines.append(f"{part}: {r.get('skipped', 'not run')}")
            continue
        rows = []
        base = r["variants"]["float32"]["param_bytes"]
        for k, v in r["variants"].items():
            row = {"variant": k, "bytes": v["param_bytes"], "ratio": base / v["param_bytes"],
                   "kratio": r["variants"]["float32"]["kernel_bytes"] / v["kernel_bytes"],
                   "quality": v.get("bleu", v.get("accuracy")),
                   "fwd_ms": 1e3 * r["latency"]["forward"][k]["median_s"]}
            if "generate" in r["latency"]:
                row["gen_ms"] = 1e3 * r["latency"]["generate"][k]["median_s"]
            rows.append(row)
        quality = "BLEU" if part == "translation" else "accuracy"
        lines.append(f"{part}:\n" + common.format_table(rows, [
            ("variant", "variant", ""), ("bytes", "param bytes", ","), ("ratio", "f32/x", ".2f"),
            ("kratio", "kernels f32/x", ".2f"),
            ("quality", quality, ".4f"), ("fwd_ms", "forward ms", ".2f"), ("gen_ms", "generate ms", ".1f")]))
    return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.quick:
        args.repeats, args.workdir = 2, ""
    result: dict[str, Any] = {"benchmark": "quantize", "environment": common.environment(),
                              "settings": {k: v for k, v in vars(args).items()},
                              "method": "weight-only: int8 symmetric per output channel on projection kernels "
                                        "(biases, norms, embeddings float32; int8+embeddings also token embeddings per row); "
                                        "bfloat16 casts every float "
                                        "parameter; dequantized inside jit, the model computes in float32"}
    result["load_average_start"] = os.getloadavg()  # the latencies mean little when this exceeds the cores
    print("classification ...", flush=True)
    result["classification"] = classification(args)
    print("translation ...", flush=True)
    result["translation"] = translation(args)
    result["load_average_end"] = os.getloadavg()
    common.write_json(args.out, result)
    print(summary(result))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
