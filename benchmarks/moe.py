"""Mixture of experts against the dense model on the default task: BLEU at equal steps, FLOPs per token.

The default experiment (configs/default.py: the built-in `tjax_numbers` translation task, a 3 + 3
layer post-LN encoder-decoder, d_model 128, d_ff 512) trained twice for the same `--steps` with the
same data, optimiser and schedule: once dense, once with every other feed-forward (`moe_layers=2`)
replaced by `--experts` experts behind a top-`--top-k` router (Switch for k = 1, GShard for k = 2;
transformer_jax/moe.py). Each run ends with the library's own evaluation: beam-search BLEU on the
test split.

FLOPs per target token (training, 3x forward) come from `transformer_jax.flops_per_token`, which
counts what a token *uses*: a top-1 MoE layer adds only the router (2·D·E) to the dense layer, while
its parameters grow E-fold. `executed` adds what the einsum dispatch really runs on top: every
capacity slot (E·C per row, empty or not) through the expert MLP, and the one-hot dispatch and
combine contractions (2 · 2·E·C·D per row).

    python -m benchmarks.moe --steps 300              # both rows (resumes an interrupted row)

Writes benchmarks/results/moe_cpu.json (device and versions recorded; rewritten after each row).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import time
from typing import Any

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "benchmarks", "results", "moe_cpu.json")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps of each row (the schedule's length)")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--moe-layers", type=int, default=2, help="every n-th layer of each stack is MoE")
    p.add_argument("--max-examples", type=int, default=0, help="test sentences for BLEU (0: all)")
    p.add_argument("--workdir", default="/tmp/benchmark_moe")
    p.add_argument("--rows", default="dense,moe")
    p.add_argument("--fresh", action="store_true", help="delete the rows' workdirs first")
    p.add_argument("--out", default=RESULT)
    return p.parse_args(argv)


def experiment_config(args, row: str):
    config = runpy.run_path(os.path.join(ROOT, "configs", "default.py"))["get_config"]()
    config.num_train_steps = args.steps
    config.eval_every = 0
    config.checkpoint_every = max(args.steps // 4, 1)
    config.decode.max_examples = args.max_examples
    if row == "moe":
        config.model.num_experts = args.experts
        config.model.moe_top_k = args.top_k
        config.model.moe_capacity_factor = args.capacity_factor
        config.model.moe_layers = args.moe_layers
    return config


def flops(config) -> dict[str, float]:
    """Active (used per token) and executed (capacity slots + dispatch einsums) training FLOPs per
    target token, at the config's full source and target lengths."""
    from transformer_jax import flops_per_token
    from transformer_jax.moe import capacity
    from transformer_jax.train.experiment import model_config

    cfg = model_config(config)
    src, tgt = config.data.max_src_len, config.data.max_tgt_len
    active = flops_per_token(cfg, src, tgt)
    executed = active
    if cfg.num_experts:
        d, f, e, k = cfg.d_model, cfg.d_ff, cfg.num_experts, cfg.moe_top_k
        mlp = 2 * d * f * (3 if cfg.activation in ("swiglu", "geglu", "geglu_tanh") else 2)
        extra = 0.0
        for flags, length in ((cfg.encoder_moe, src), (cfg.decoder_moe, tgt)):
            slots = e * capacity(length, e, k, cfg.moe_capacity_factor)  # per row
            per_row = slots * mlp - k * length * mlp + 2 * 2 * slots * length * d
            extra += sum(flags) * per_row
        executed = active + 3.0 * extra / tgt
    return {"flops_per_token_active": active, "flops_per_token_executed": executed}


def run_row(args, row: str) -> dict[str, Any]:
    import jax

    import transformer_jax as tj
    from transformer_jax.train.loop import train

    config = experiment_config(args, row)
    workdir = os.path.join(args.workdir, row)
    if args.fresh and os.path.exists(workdir):
        shutil.rmtree(workdir)
    t0 = time.time()
    summary = train(config, workdir, progress=False)
    seconds = time.time() - t0
    from transformer_jax.train.logs import read_metrics

    records = read_metrics(workdir)  # the last logged training step, also when this call only re-scored
    last = next((records[s] for s in sorted(records, reverse=True) if "loss" in records[s]), {})
    result = summary.get("eval", {})
    cfg = dict(config.model)
    keep = ("num_experts", "moe_top_k", "moe_capacity_factor", "moe_layers", "moe_load_balance_loss",
            "moe_router_z_loss", "d_model", "d_ff", "num_encoder_layers", "num_decoder_layers", "activation")
    return {
        "row": row, "steps": summary.get("step"), "bleu": result.get("bleu"), "bleu_signature": result.get("signature"),
        "test_examples": result.get("examples"), "beam_size": result.get("beam_size"),
        "parameters": tj.param_count(jax.device_get(summary["state"].params)),
        "final_train": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "model": {k: cfg[k] for k in keep}, "wall_seconds_this_call": seconds,
        "resumed_from_step": summary.get("start_step"), **flops(config),
    }


def finished_rows(path: str, steps: int) -> dict[str, Any]:
    """Rows already in the result file for the same number of steps (a rerun skips them)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        previous = json.load(f)
    return previous.get("rows", {}) if previous.get("args", {}).get("steps") == steps else {}


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    out: dict[str, Any] = {"benchmark": "moe", "environment": common.environment(),
                           "note": "2-core CPU shared with other jobs (contended); wall times are indicative only",
                           "args": vars(args), "rows": {} if args.fresh else finished_rows(args.out, args.steps)}
    for row in args.rows.split(","):
        if row in out["rows"] and out["rows"][row].get("bleu") is not None:
            print(f"{row}: done (BLEU {out['rows'][row]['bleu']:.2f}); skipped", flush=True)
            continue
        result = run_row(args, row)
        others = {} if args.fresh else finished_rows(args.out, args.steps)  # rows another run wrote meanwhile
        out["rows"] = {**others, **out["rows"], row: result}
        rows = out["rows"]
        if "dense" in rows and "moe" in rows:
            out["moe_over_dense"] = {
                "bleu_difference": rows["moe"]["bleu"] - rows["dense"]["bleu"],
                "active_flops_ratio": rows["moe"]["flops_per_token_active"] / rows["dense"]["flops_per_token_active"],
                "executed_flops_ratio": rows["moe"]["flops_per_token_executed"] / rows["dense"]["flops_per_token_executed"],
                "parameter_ratio": rows["moe"]["parameters"] / rows["dense"]["parameters"]}
        common.write_json(args.out, out)
        print(f"{row}: BLEU {rows[row]['bleu']}, {rows[row]['flops_per_token_active']:,.0f} active FLOPs/token, "
              f"{rows[row]['parameters']:,} parameters", flush=True)
    return out


if __name__ == "__main__":
    main()
