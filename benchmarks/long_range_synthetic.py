"""Key-value retrieval at equal wall-clock budgets: where attention patterns differ.

`tjax_retrieval` (transformer_jax/data/retrieval.py): a class marker, key/value pairs among filler,
and a query key at the far end; the label is the value bound to the queried key. The classifier
reads the marker's final state (`pooling='cls'`, configs/retrieval.py), so information must travel
the whole sequence: `Windowed(w)` over L layers reaches L·w positions and stays at chance (10 %),
while `Dense` and `BlockSparse` with global blocks (the marker's block reads every block; BigBird's
global tokens) can learn the retrieval. Each variant trains for the same `--budget-minutes` of
training time; the best validation checkpoint is scored on the test split.

    python -m benchmarks.long_range_synthetic --budget-minutes 7      # the committed CPU run

Reuses the budgeted-run machinery of benchmarks/lra_listops.py (resumable the same way).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from benchmarks import common
from benchmarks.lra_listops import Results, classifier_row, load_config, recipe_of, run_budgeted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, "configs", "retrieval.py")
VARIANTS = ("dense", "windowed", "block_sparse", "block_sparse_local")
BUILDER_CONFIGS = {"default": "tjax_retrieval", "small": "tjax_retrieval/small", "tiny": "tjax_retrieval/tiny"}
LENGTHS = {"default": 1024, "small": 512, "tiny": 64}


def attention(variant: str, args):
    from transformer_jax.attention import BlockSparse, Dense, Windowed

    b = args.block_size
    return {"dense": lambda: Dense(), "windowed": lambda: Windowed(args.window),
            "block_sparse": lambda: BlockSparse(block_size=b, window_blocks=3, global_blocks=1, random_blocks=2),
            # the same blocks without global or random ones: a local pattern, expected to fail like Windowed
            "block_sparse_local": lambda: BlockSparse(block_size=b, window_blocks=3, global_blocks=0,
                                                      random_blocks=0)}[variant]()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.long_range_synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="dense,windowed,block_sparse", help=f"from {', '.join(VARIANTS)}")
    p.add_argument("--budget-minutes", type=float, default=7.0, help="training minutes per variant")
    p.add_argument("--builder-config", default="small", choices=tuple(BUILDER_CONFIGS),
                   help="tjax_retrieval size: default (1024 tokens), small (512), tiny (64, tests)")
    p.add_argument("--window", type=int, default=32, help="Windowed(window)")
    p.add_argument("--block-size", type=int, default=32, help="BlockSparse block size")
    p.add_argument("--eval-every-minutes", type=float, default=1.0)
    p.add_argument("--eval-batches", type=int, default=8, help="validation batches per periodic eval (0: all)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    p.add_argument("--peak-lr", type=float, default=2e-3, help="peak learning rate (inverse-sqrt decay after)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--data-dir", default="", help="tfds data_dir (default: ~/tensorflow_datasets)")
    p.add_argument("--workdir", default="/tmp/long_range_synthetic")
    p.add_argument("--fresh", action="store_true", help="delete the variants' workdirs and results first")
    p.add_argument("--note", default="", help="recorded with the results (e.g. 'CPU shared with other jobs')")
    p.add_argument("--json", default=None, help="default benchmarks/results/long_range_synthetic_<backend>.json")
    p.add_argument("--csv", default=None)
    p.add_argument("--png", default=None)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: {bad[0]!r} is not one of {', '.join(VARIANTS)}")
    if args.budget_minutes <= 0:
        p.error(f"--budget-minutes={args.budget_minutes} must be > 0")
    return args


def experiment_config(args, variant: str):
    c = load_config(CONFIG_FILE)
    length = LENGTHS[args.builder_config]
    c.model.update(encoder_attention=attention(variant, args), max_len=length, num_encoder_layers=args.layers,
                   d_model=args.d_model)
    c.data.update(dataset=BUILDER_CONFIGS[args.builder_config], max_src_len=length, data_dir=args.data_dir)
    c.schedule.warmup_steps = args.warmup
    c.optimizer.learning_rate = args.peak_lr * (args.d_model * args.warmup) ** 0.5  # inverse_sqrt's scale
    c.batch_size, c.budget_minutes, c.eval_every_minutes = args.batch, args.budget_minutes, args.eval_every_minutes
    c.eval_batches = args.eval_batches
    return c


COLUMNS = [("row", "variant", ""), ("encoder_attention", "attention", ""), ("steps", "steps", ""),
           ("train_minutes", "minutes", ".1f"), ("best_val_accuracy", "best val %", ".1f"),
           ("test_accuracy", "test acc %", ".1f"), ("steps_per_s", "steps/s", ".2f")]


def main(argv=None) -> dict[str, Any]:
    import jax

    args = parse_args(argv)
    backend = jax.default_backend()
    json_path = args.json or os.path.join(os.path.dirname(__file__), "results", f"long_range_synthetic_{backend}.json")
    csv_path = args.csv or os.path.splitext(json_path)[0] + ".csv"
    png_path = args.png or os.path.splitext(json_path)[0] + ".png"
    if args.fresh:
        for v in args.variants:
            shutil.rmtree(os.path.join(args.workdir, v), ignore_errors=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "csv", "png", "fresh")}
    settings["command"] = ("python -m benchmarks.long_range_synthetic "
                           + " ".join(argv if argv is not None else sys.argv[1:]))
    env = {**common.environment(), "load_average_at_start": os.getloadavg()}
    header = {"benchmark": "long_range_synthetic", "environment": env, "settings": settings,
              "task": "key-value retrieval (tjax_retrieval): the label is the value bound to the query key at the "
                      "far end; cls pooling; chance 10 %",
              "budget": "equal training minutes per variant: the loop's wall clock after compilation "
                        "(checkpoints included, periodic evaluation not)"}
    results = Results(json_path, header, fresh=args.fresh)
    length = LENGTHS[args.builder_config]
    title = f"key-value retrieval, {length} tokens, {args.budget_minutes:g} min per variant, {env['device_kind']}"
    for variant in args.variants:
        config = experiment_config(args, variant)
        if results.done(variant, recipe_of(config)):
            print(f"=== {variant}: finished earlier, kept", flush=True)
            continue
        print(f"=== {variant}: {config.model.encoder_attention!r}, {args.budget_minutes:g} min", flush=True)
        row: dict[str, Any] = {"row": variant, "encoder_attention": repr(config.model.encoder_attention),
                               "recipe": recipe_of(config)}
        try:
            out = run_budgeted(config, os.path.join(args.workdir, variant))
            row.update(classifier_row(out), status="done")
        except Exception as err:  # noqa: BLE001 - record the failure, go on with the other variants
            row.update(status="error", error=common.short_error(err))
            print(f"{variant} failed: {row['error']}", flush=True)
        results.put(row)
        results.save(csv_path, png_path, title, {"chance": 10.0})
    print(common.format_table(results.rows, COLUMNS))
    print(f"wrote {json_path}, {csv_path} and {png_path}")
    return {"settings": settings, "rows": results.rows}


if __name__ == "__main__":
    main()
