"""Long Range Arena ListOps: train and test each attention variant with the library's training loop.

Tay et al. 2021, "Long Range Arena: A Benchmark for Efficient Transformers" (arXiv:2011.04006),
ListOps (§3.1) on the locally built `tjax_listops` dataset, with the experiment config
`configs/listops.py` (encoder-only classifier) trained by `transformer_jax.train.loop.train`;
only the fields below are overridden. Each variant changes nothing but `model.encoder_attention`.

    python -m benchmarks.lra_listops            # the full run (GPU): paper settings, 5k steps
    python -m benchmarks.lra_listops --quick    # the committed CPU run (small data, small model)

Defaults describe the full run: 96k/2k/2k examples of length 500-2000 (builder config `full`),
4 layers, d_model 512, 8 heads, d_ff 1024, batch 32, 5000 steps, inputs padded to 2000 tokens.
Test accuracy is measured once at the end on the whole test split; steps/s is the median of the
loop's logged throughput (examples/s ÷ batch) over the log intervals after the first.

Paper figures (LRA Table 1, ListOps test accuracy): Transformer 36.37 %, Local Attention 15.82 %,
BigBird 36.05 %. `dense` and `flash` compute the same function (compare with Transformer),
`windowed` is the local-attention row, `block_sparse` the BigBird row.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any


from benchmarks import common

VARIANTS = ("dense", "flash", "windowed", "block_sparse")
# (paper row, ListOps test accuracy %) from LRA Table 1.
PAPER = {"dense": ("Transformer", 36.37), "flash": ("Transformer", 36.37),
         "windowed": ("Local Attention", 15.82), "block_sparse": ("BigBird", 36.05)}
BUILDER_CONFIGS = {"full": "tjax_listops", "small": "tjax_listops/small", "tiny": "tjax_listops/tiny"}
CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "listops.py")
# The committed CPU run (2 shared cores): small data, a small model, a few hundred steps.
QUICK = dict(builder_config="small", steps=150, batch=4, layers=2, d_model=32, heads=2, d_ff=64,
             learning_rate=1e-3, warmup=15)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lra_listops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated from {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=5000, help="training steps per variant")
    p.add_argument("--builder-config", default="full", choices=tuple(BUILDER_CONFIGS),
                   help="tjax_listops size: full (LRA 96k/2k/2k), small (2k/200/200), tiny (tests only)")
    p.add_argument("--max-len", type=int, default=2000, help="input length (examples are shorter than 2000)")
    p.add_argument("--batch", type=int, default=32, help="global batch size")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--learning-rate", type=float, help="peak learning rate (default: configs/listops.py's)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default: configs/listops.py's)")
    p.add_argument("--window", type=int, default=64, help="Windowed(window): keys within ±window")
    p.add_argument("--block-size", type=int, default=64, help="BlockSparse block size (BigBird: 64)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: bfloat16 on GPU/TPU, float32 on CPU")
    p.add_argument("--config", default=CONFIG_FILE, help="experiment config file (get_config())")
    p.add_argument("--data-dir", default="", help="tfds data_dir (default: ~/tensorflow_datasets)")
    p.add_argument("--workdir", default="/tmp/lra_listops", help="one sub-directory per variant (replaced)")
    p.add_argument("--quick", action="store_true",
                   help="the committed CPU run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--json", default=None, help="result JSON (default benchmarks/results/lra_listops_<backend>.json)")
    p.add_argument("--csv", default=None, help="result CSV (default: the JSON path with .csv)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: {bad[0]!r} is not one of {', '.join(VARIANTS)}")
    return args


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("_lra_listops_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def attention(variant: str, args):
    from transformer_jax.attention import BlockSparse, Dense, Flash, Windowed

    return {"dense": lambda: Dense(), "flash": lambda: Flash(),
            "windowed": lambda: Windowed(args.window),
            "block_sparse": lambda: BlockSparse(block_size=args.block_size)}[variant]()


def experiment_config(args, variant: str):
    """configs/listops.py with this run's overrides (the only fields that differ from the file)."""
    c = load_config(args.config)
    c.model.update(num_encoder_layers=args.layers, d_model=args.d_model, num_heads=args.heads, d_ff=args.d_ff,
                   max_len=args.max_len, dtype=args.dtype, encoder_attention=attention(variant, args))
    c.data.update(task=BUILDER_CONFIGS[args.builder_config], max_src_len=args.max_len,
                  eval_split="test", data_dir=args.data_dir)
    c.batch_size = args.batch
    c.num_train_steps = args.steps
    if args.learning_rate is not None:
        c.optimizer.learning_rate = args.learning_rate
    if args.warmup is not None:
        c.schedule.warmup_steps = args.warmup
    c.log_every = max(1, args.steps // 10)
    c.eval_every = args.steps  # test accuracy once, at the end
    c.eval_batches = 0
    c.checkpoint_every = args.steps
    c.keep_checkpoints = 1
    return c


def run_variant(args, variant: str) -> dict[str, Any]:
    from transformer_jax.train.loop import make_data_iterator, make_tokenizer, train

    config = experiment_config(args, variant)
    workdir = os.path.join(args.workdir, variant)
    if os.path.isdir(workdir):
        shutil.rmtree(workdir)  # a fresh run, never a resume of an older one
    os.makedirs(workdir)
    tokenizer = make_tokenizer(config, workdir)
    train_iter = make_data_iterator(config, "train", tokenizer, repeat=True)
    eval_fn = lambda: make_data_iterator(config, "test", tokenizer, repeat=False)  # noqa: E731
    t0 = time.perf_counter()
    summary = train(config, workdir, train_iter=train_iter, eval_iter_fn=eval_fn, progress=False)
    wall = time.perf_counter() - t0
    records = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.endswith("\n")]
    train_recs = [r for r in records if "tokens_per_sec" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    rates = [r["tokens_per_sec"] / args.batch for r in train_recs]
    steady = rates[1:] or rates  # the first interval includes the iterator's start-up
    paper_name, paper_acc = PAPER[variant]
    last = evals[-1] if evals else {}
    return {
        "variant": variant, "encoder_attention": repr(config.model.encoder_attention),
        "steps": int(summary["step"]), "test_accuracy": 100.0 * last["eval_accuracy"] if last else None,
        "test_examples": int(last["eval_tokens"]) if last else None, "test_loss": last.get("eval_loss"),
        "final_train_loss": train_recs[-1]["loss"] if train_recs else None,
        "final_train_accuracy": 100.0 * train_recs[-1]["accuracy"] if train_recs else None,
        "steps_per_s": statistics.median(steady) if steady else None,
        "wall_s": wall, "paper_model": paper_name, "paper_test_accuracy": paper_acc,
        "train_curve": [{"step": r["step"], "loss": r["loss"], "accuracy": r["accuracy"]} for r in train_recs],
    }


COLUMNS = [("variant", "variant", ""), ("encoder_attention", "attention", ""), ("steps", "steps", ""),
           ("test_accuracy", "test acc %", ".2f"), ("steps_per_s", "steps/s", ".3f"),
           ("rel_speed", "speed vs dense", ".2f"), ("wall_s", "wall s", ".0f"),
           ("paper_model", "paper (LRA Table 1)", ""), ("paper_test_accuracy", "paper acc %", ".2f")]


def main(argv=None) -> dict[str, Any]:
    import jax

    args = parse_args(argv)
    backend = jax.default_backend()
    args.dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    json_path = args.json or os.path.join(os.path.dirname(__file__), "results", f"lra_listops_{backend}.json")
    csv_path = args.csv or os.path.splitext(json_path)[0] + ".csv"
    os.makedirs(args.workdir, exist_ok=True)
    base = experiment_config(args, "dense")
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "csv")}
    settings.update(task=base.data.task, config_file=os.path.relpath(args.config, os.getcwd()),
                    learning_rate=base.optimizer.learning_rate, schedule=base.schedule.to_dict(),
                    optimizer=base.optimizer.to_dict(), dropout_rate=base.model.dropout_rate,
                    command="python -m benchmarks.lra_listops " + " ".join(argv if argv is not None else sys.argv[1:]))
    rows: list[dict[str, Any]] = []
    env = common.environment()

    def save():
        dense = next((r["steps_per_s"] for r in rows if r["variant"] == "dense" and r.get("steps_per_s")), None)
        for r in rows:
            r["rel_speed"] = r["steps_per_s"] / dense if dense and r.get("steps_per_s") else None
        common.write_json(json_path, {"benchmark": "lra_listops", "environment": env, "settings": settings,
                                      "paper": "Tay et al. 2021, Long Range Arena, Table 1 (ListOps)",
                                      "rows": rows})
        common.write_csv(csv_path, [{k: v for k, v in r.items() if k != "train_curve"} for r in rows])

    for variant in args.variants:
        print(f"=== {variant}: {experiment_config(args, variant).model.encoder_attention!r}", flush=True)
        try:
            row = run_variant(args, variant)
        except Exception as err:  # noqa: BLE001 - record the failure, go on with the other variants
            row = {"variant": variant, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                   "paper_model": PAPER[variant][0], "paper_test_accuracy": PAPER[variant][1]}
            print(f"{variant} failed: {row['error']}", flush=True)
        rows.append(row)
        save()
    print(common.format_table(rows, COLUMNS))
    print(f"wrote {json_path} and {csv_path}")
    return {"settings": settings, "rows": rows}


if __name__ == "__main__":
    main()
