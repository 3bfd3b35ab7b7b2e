"""Long Range Arena ListOps at equal wall-clock budgets, from scratch and with self-pretraining.

Tay et al. 2021, "Long Range Arena" (arXiv:2011.04006), ListOps (§3.1), on the locally built
`tjax_listops` (full split by default: 96k/2k/2k expressions of 500-2000 tokens), with the experiment
config `configs/listops.py` trained by the library's loop. Every attention variant trains for the same
`--budget-minutes` of training time (`config.budget_minutes`: the loop's wall clock after compilation,
checkpoints included, periodic evaluation not; transformer_jax/train/budget.py), is evaluated on the
validation split every `--eval-every-minutes`, and its best validation checkpoint is scored once on
the test split. Variants change nothing but `model.encoder_attention`.

    python -m benchmarks.lra_listops --budget-minutes 30                 # CPU recipe, full split
    python -m benchmarks.lra_listops --budget-minutes 30 --self-pretrain # + SPT rows at the same budget
    python -m benchmarks.lra_listops --preset lra --budget-minutes 60 --self-pretrain   # LRA scale, a GPU

`--self-pretrain` (Amos et al. 2024, "Never Train from Scratch", arXiv:2310.02980) adds, per variant,
a row that spends `--pretrain-fraction` (default half) of the same budget on masked-LM pretraining over
the *training inputs only* (configs/listops_mlm.py: 15% of tokens, BERT's 80/10/10 corruption, no
labels) and the rest fine-tuning from it (`config.init_from`), against the from-scratch row's whole
budget.

The recipe (research notes: LRA's own Transformer is post-LN with learned positions and reaches ~36%
after 5k steps of batch 32; Amos et al. reach far more with pre-LN, rotary positions and SPT):
pre-LN, rotary positions, first-token pooling (LRA's "CLS"; the first token is the outermost
operator), GELU, AdamW (β2 0.98, weight decay 0.01), linear warm-up then inverse-square-root decay
(LRA's schedule; it needs no total step count, so a time budget may end the run anywhere), dropout
0.1. Presets: `cpu` (4 layers, d_model 64, 4 heads, batch 16, 100 warm-up steps) and `lra` (Table
1's size: 4 layers, d_model 512, 8 heads, d_ff 1024, batch 32, 1000 warm-up steps). Inputs are
padded to 2048 (expressions are under 2000 tokens); evaluation regroups them by length and trims the
padding where the attention allows it (`length_invariant`: not BlockSparse).

Mean pooling was the first choice and stayed at chance in a 30-minute CPU row: the outermost
operator, which alone decides ~37 % of the labels (MAX → mostly 9, MIN → mostly 0), is one token
among ~1000 in a mean, and a windowed model cannot carry it to the rest of the sequence. Read at
the first position, windowed attention sees it directly.

Resumable: the result JSON is rewritten after every run; a finished row with the same recipe is
skipped, and an unfinished one resumes from its workdir (`<workdir>/<row>`) with the budget it has
left (`--fresh` starts over). Writes JSON + CSV + PNG (validation accuracy against training minutes
and against steps) under benchmarks/results/ with the device and versions.

Paper figures (LRA Table 1, ListOps test accuracy): Transformer 36.37, BigBird 36.05, Performer
18.01, Local Attention 15.82. `dense`/`flash` compare with Transformer, `block_sparse` with BigBird,
`windowed` with Local Attention, `performer` with Performer.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import os
import shutil
import sys
from typing import Any

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, "configs", "listops.py")
MLM_CONFIG_FILE = os.path.join(ROOT, "configs", "listops_mlm.py")
PAPER = {"dense": ("Transformer", 36.37), "flash": ("Transformer", 36.37), "windowed": ("Local Attention", 15.82),
         "block_sparse": ("BigBird", 36.05), "performer": ("Performer", 18.01)}
BUILDER_CONFIGS = {"full": "tjax_listops", "small": "tjax_listops/small", "tiny": "tjax_listops/tiny"}
PRESETS = {
    "cpu": dict(layers=4, d_model=64, heads=4, d_ff=128, batch=16, peak_lr=1e-3, warmup=100,
                pooling="cls", eval_batches=16, eval_every_minutes=4.0),
    "lra": dict(layers=4, d_model=512, heads=8, d_ff=1024, batch=32, peak_lr=1e-3, warmup=1000,
                pooling="cls", eval_batches=0, eval_every_minutes=5.0),
}


def has_performer() -> bool:
    from transformer_jax import attention

    return hasattr(attention, "Performer")


def variants() -> tuple[str, ...]:
    """The attention variants this checkout has (Performer once `transformer_jax.attention` exports it)."""
    return ("dense", "flash", "windowed", "block_sparse") + (("performer",) if has_performer() else ())


def attention(variant: str, args):
    from transformer_jax import attention as a

    if variant == "performer":
        return a.Performer()
    return {"dense": lambda: a.Dense(), "flash": lambda: a.Flash(), "windowed": lambda: a.Windowed(args.window),
            "block_sparse": lambda: a.BlockSparse(block_size=args.block_size)}[variant]()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lra_listops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    known = variants()
    p.add_argument("--variants", default=",".join(known), help=f"comma-separated from {', '.join(known)}")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="training minutes per row (equal for all)")
    p.add_argument("--self-pretrain", action="store_true", help="also run masked-LM self-pretraining + fine-tuning")
    p.add_argument("--pretrain-fraction", type=float, default=0.5, help="share of the budget spent pretraining")
    p.add_argument("--preset", default="cpu", choices=tuple(PRESETS), help="model/recipe size (see the doc)")
    p.add_argument("--builder-config", default="full", choices=tuple(BUILDER_CONFIGS),
                   help="tjax_listops size: full (LRA 96k/2k/2k), small (2k/200/200), tiny (tests only)")
    p.add_argument("--max-len", type=int, default=2048, help="inputs are padded to this length")
    for name in ("layers", "d-model", "heads", "d-ff", "batch", "warmup", "eval-batches"):
        p.add_argument(f"--{name}", type=int, help="default: the preset's")
    p.add_argument("--pooling", choices=("cls", "mean"), help="first-token or mean pooling (default: the preset's)")
    p.add_argument("--peak-lr", type=float, help="peak learning rate after warm-up (default: the preset's)")
    p.add_argument("--eval-every-minutes", type=float, help="validation every this many training minutes")
    p.add_argument("--max-steps", type=int, default=1_000_000, help="a step cap besides the budget")
    p.add_argument("--window", type=int, default=64, help="Windowed(window): keys within ±window")
    p.add_argument("--block-size", type=int, default=64, help="BlockSparse block size (BigBird: 64)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: bfloat16 on GPU/TPU, float32 on CPU")
    p.add_argument("--data-dir", default="", help="tfds data_dir (default: ~/tensorflow_datasets)")
    p.add_argument("--workdir", default="/tmp/lra_listops", help="one sub-directory per row (kept: resumable)")
    p.add_argument("--fresh", action="store_true", help="delete the rows' workdirs and results first")
    p.add_argument("--note", default="", help="recorded with the results (e.g. 'CPU shared with other jobs')")
    p.add_argument("--json", default=None, help="result JSON (default benchmarks/results/lra_listops_<backend>.json)")
    p.add_argument("--csv", default=None, help="result CSV (default: the JSON path with .csv)")
    p.add_argument("--png", default=None, help="accuracy curves (default: the JSON path with .png)")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in known]
    if bad:
        p.error(f"--variants: {bad[0]!r} is not one of {', '.join(known)}")
    if args.budget_minutes <= 0:
        p.error(f"--budget-minutes={args.budget_minutes} must be > 0")
    if not 0.0 < args.pretrain_fraction < 1.0:
        p.error(f"--pretrain-fraction={args.pretrain_fraction} must be in (0, 1)")
    return args


def load_config(path: str):
    return common.load_module(path, "_bench_config").get_config()


def inverse_sqrt_scale(peak_lr: float, d_model: int, warmup: int) -> float:
    """The `inverse_sqrt` schedule's scale for a given peak (reached at the end of warm-up)."""
    return peak_lr * (d_model * warmup) ** 0.5


def experiment_config(args, variant: str, *, file: str = CONFIG_FILE, budget_minutes: float | None = None):
    """configs/listops.py (or listops_mlm.py) with this run's overrides."""
    c = load_config(file)
    c.model.update(num_encoder_layers=args.layers, d_model=args.d_model, num_heads=args.heads, d_ff=args.d_ff,
                   max_len=args.max_len, dtype=args.dtype, encoder_attention=attention(variant, args))
    if file == CONFIG_FILE:  # the classifier; the masked-LM pretraining has no pooling
        c.model.pooling = args.pooling
    c.data.update(dataset=BUILDER_CONFIGS[args.builder_config], max_src_len=args.max_len, data_dir=args.data_dir)
    c.batch_size = args.batch
    c.num_train_steps = args.max_steps
    c.budget_minutes = args.budget_minutes if budget_minutes is None else budget_minutes
    c.optimizer.learning_rate = inverse_sqrt_scale(args.peak_lr, args.d_model, args.warmup)
    c.schedule.update(name="inverse_sqrt", warmup_steps=args.warmup)
    c.eval_every, c.eval_every_minutes, c.eval_batches = 0, args.eval_every_minutes, args.eval_batches
    c.log_every, c.checkpoint_every, c.keep_checkpoints = 20, 200, 1
    return c


# ----------------------------------------------------------------------------------------------
# One budgeted run, its curve; shared with benchmarks/long_range_synthetic.py


def recipe_of(config) -> dict[str, Any]:
    """What makes two runs comparable (a finished row with another recipe is not reused)."""
    return json.loads(config.to_json_best_effort())


def run_budgeted(config, workdir: str) -> dict[str, Any]:
    """Train (or resume) `config` in `workdir` under its budget; returns the loop's summary plus the
    validation curve and the test result of the best checkpoint (eval.json)."""
    from transformer_jax.train.loop import train

    os.makedirs(workdir, exist_ok=True)
    recipe_path = os.path.join(workdir, "recipe.json")
    recipe = recipe_of(config)
    if os.path.exists(recipe_path):
        with open(recipe_path) as f:
            if json.load(f) != recipe:
                raise ValueError(f"{workdir} holds a run with another recipe; pass --fresh or another --workdir")
    else:
        common.write_json(recipe_path, recipe)
    summary = train(config, workdir, progress=False)
    if summary.get("preempted"):  # SIGTERM / Ctrl-C: the loop saved a checkpoint; stop the whole benchmark
        raise SystemExit(f"{summary.get('signal') or 'stopped'}: {workdir} saved; rerun the same command to resume")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.endswith("\n")]
    by_step: dict[int, dict] = {}
    for r in records:  # after a resume, steps are logged again: keep the last record of each
        by_step.setdefault(r["step"], {}).update(r)
    curve = [{"step": s, "minutes": r["train_seconds"] / 60, "val_accuracy": 100 * r["eval_accuracy"],
              "val_loss": r["eval_loss"]} for s, r in sorted(by_step.items()) if "eval_accuracy" in r]
    result = {}
    if os.path.exists(os.path.join(workdir, "eval.json")):
        with open(os.path.join(workdir, "eval.json")) as f:
            result = json.load(f)
    return {"steps": int(summary["step"]), "train_minutes": summary["train_seconds"] / 60, "curve": curve,
            "test": result}


def classifier_row(out: dict, offset_minutes: float = 0.0) -> dict[str, Any]:
    """The columns of a classification run: test accuracy of the best validation checkpoint, steps,
    training minutes (steps/s is derived from these when the results are saved: `with_speed`)."""
    test = out["test"]
    curve = [{**p, "minutes": p["minutes"] + offset_minutes} for p in out["curve"]]
    best = max(curve, key=lambda p: p["val_accuracy"]) if curve else {}
    return {"steps": out["steps"], "train_minutes": out["train_minutes"] + offset_minutes,
            "test_accuracy": 100 * test["accuracy"] if "accuracy" in test else None,
            "test_examples": int(test["tokens"]) if "tokens" in test else None,
            "best_step": test.get("checkpoint_step"), "best_val_accuracy": best.get("val_accuracy"),
            "curve": curve}


def with_speed(row: dict) -> dict:
    """The row with steps/s of training time (the budget's clock: evaluation not counted); an SPT
    row's steps and speed are its fine-tuning's."""
    minutes = row.get("train_minutes", 0.0) - row.get("pretrain_minutes", 0.0)
    return {**row, "steps_per_s": row["steps"] / (60 * minutes)} if "steps" in row and minutes > 0 else row


def plot(rows: list[dict], path: str, title: str, references: dict[str, float]) -> None:
    """Validation accuracy against training minutes and against steps, one line per row, and the
    `references` (label -> accuracy %) as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in rows:
        curve = row.get("curve") or []
        if not curve:
            continue
        label = row["row"]
        axes[0].plot([p["minutes"] for p in curve], [p["val_accuracy"] for p in curve], marker=".", label=label)
        axes[1].plot([p["step"] for p in curve], [p["val_accuracy"] for p in curve], marker=".", label=label)
    for ax, xlabel in zip(axes, ("training minutes (SPT rows: pretraining included)", "steps (SPT: fine-tuning)")):
        for (label, value), shade in zip(references.items(), ("grey", "black")):
            ax.axhline(value, color=shade, linestyle="--", linewidth=0.8, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy %")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


class Results:
    """The result file, rewritten atomically after every row; finished rows are reused on a rerun.

    Several processes may fill one file (e.g. one per core, `taskset -c 0` / `-c 1`, each with its
    own `--variants`): a save re-reads the file under a lock and replaces only this process's rows.
    """

    def __init__(self, json_path: str, header: dict, *, fresh: bool):
        self.json_path, self.header = json_path, header
        self.rows: list[dict] = [] if fresh else self._on_disk()
        self._mine: dict[str, dict] = {}

    def _on_disk(self) -> list[dict]:
        if not os.path.exists(self.json_path):
            return []
        with open(self.json_path) as f:
            return json.load(f).get("rows", [])

    def done(self, name: str, recipe: dict) -> dict | None:
        return next((r for r in self.rows if r["row"] == name and r.get("status") == "done"
                     and r.get("recipe") == recipe), None)

    def put(self, row: dict) -> None:
        self._mine[row["row"]] = row

    def save(self, csv_path: str, png_path: str | None, title: str, references: dict[str, float]) -> None:
        folder = os.path.dirname(os.path.abspath(self.json_path))
        os.makedirs(folder, exist_ok=True)
        lock = os.open(folder, os.O_RDONLY)  # flock on the folder: no lock file left beside the results
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rows = [r for r in self._on_disk() if r["row"] not in self._mine]
            self.rows = [with_speed(r) for r in rows + list(self._mine.values())]
            common.write_json(self.json_path, {**self.header, "rows": self.rows})
        finally:
            os.close(lock)
        common.write_csv(csv_path, [{k: v for k, v in r.items() if k not in ("curve", "recipe", "pretrain_curve")}
                                    for r in self.rows])
        if png_path and importlib.util.find_spec("matplotlib") is None:
            print(f"matplotlib is not installed (pip install -e '.[bench]'): {png_path} not written")
        elif png_path:
            plot(self.rows, png_path, title, references)


# ----------------------------------------------------------------------------------------------
# The benchmark


def row_configs(args, variant: str, spt: bool):
    """(pretraining config or None, classifier config) of a row; SPT splits the budget."""
    workdir = os.path.join(args.workdir, f"{variant}+spt" if spt else variant)
    if not spt:
        return None, experiment_config(args, variant)
    pre_minutes = args.budget_minutes * args.pretrain_fraction
    pre = experiment_config(args, variant, file=MLM_CONFIG_FILE, budget_minutes=pre_minutes)
    fine = experiment_config(args, variant, budget_minutes=args.budget_minutes - pre_minutes)
    fine.init_from = workdir + "-pretrain"
    return pre, fine


def row_recipe(args, variant: str, spt: bool) -> dict:
    pre, fine = row_configs(args, variant, spt)
    return recipe_of(fine) if pre is None else {"pretrain": recipe_of(pre), "finetune": recipe_of(fine)}


def run_row(args, variant: str, spt: bool) -> dict[str, Any]:
    name = f"{variant}+spt" if spt else variant
    workdir = os.path.join(args.workdir, name)
    paper_name, paper_acc = PAPER[variant]
    pre, fine = row_configs(args, variant, spt)
    row: dict[str, Any] = {"row": name, "variant": variant, "self_pretrain": spt, "paper_model": paper_name,
                           "paper_test_accuracy": paper_acc, "encoder_attention": repr(fine.model.encoder_attention),
                           "recipe": row_recipe(args, variant, spt)}
    if pre is None:
        return {**row, **classifier_row(run_budgeted(fine, workdir))}
    pretrain = run_budgeted(pre, workdir + "-pretrain")
    row.update(pretrain_steps=pretrain["steps"], pretrain_minutes=pretrain["train_minutes"],
               pretrain_curve=pretrain["curve"],
               pretrain_masked_accuracy=pretrain["curve"][-1]["val_accuracy"] if pretrain["curve"] else None)
    return {**row, **classifier_row(run_budgeted(fine, workdir), offset_minutes=pretrain["train_minutes"])}


def first_token_baselines(dataset: str, data_dir: str = "") -> dict[str, dict[str, float]]:
    """Per evaluation split, the accuracy % of two rules fitted on the training split (its first 20k
    expressions): the most frequent label, and the most frequent label per outermost operator (the
    first token). The second is what a model reading only the first token reaches: ~37 % on LRA
    ListOps, the level of LRA Table 1's Transformer."""
    import collections

    from transformer_jax.data.sources import open_source

    def rows(split: str, limit: int | None = None):
        source = open_source(dataset, split, data_dir=data_dir or None)
        for i in range(len(source) if limit is None else min(limit, len(source))):
            record = source[i]
            text = record["text"].decode() if isinstance(record["text"], bytes) else record["text"]
            yield text.split(maxsplit=1)[0], int(record["label"])

    per_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for op, label in rows("train", 20_000):
        per_op[op][label] += 1
    overall = sum(per_op.values(), collections.Counter()).most_common(1)[0][0]
    rule = {op: counts.most_common(1)[0][0] for op, counts in per_op.items()}
    out = {}
    for split in ("validation", "test"):
        pairs = list(rows(split))
        out[split] = {"majority": 100 * sum(label == overall for _, label in pairs) / len(pairs),
                      "first_token": 100 * sum(rule.get(op, overall) == label for op, label in pairs) / len(pairs)}
    return out


COLUMNS = [("row", "row", ""), ("encoder_attention", "attention", ""), ("steps", "steps", ""),
           ("train_minutes", "minutes", ".1f"), ("best_val_accuracy", "best val %", ".2f"),
           ("test_accuracy", "test acc %", ".2f"), ("steps_per_s", "steps/s", ".3f"),
           ("paper_model", "paper (LRA Table 1)", ""), ("paper_test_accuracy", "paper %", ".2f")]


def main(argv=None) -> dict[str, Any]:
    import jax

    args = parse_args(argv)
    backend = jax.default_backend()
    args.dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    json_path = args.json or os.path.join(os.path.dirname(__file__), "results", f"lra_listops_{backend}.json")
    csv_path = args.csv or os.path.splitext(json_path)[0] + ".csv"
    png_path = args.png or os.path.splitext(json_path)[0] + ".png"
    rows = [(v, spt) for v in args.variants for spt in ((False, True) if args.self_pretrain else (False,))]
    if args.fresh:
        for v, spt in rows:
            for suffix in ("", "-pretrain"):
                shutil.rmtree(os.path.join(args.workdir, (f"{v}+spt" if spt else v) + suffix), ignore_errors=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "csv", "png", "fresh")}
    settings["command"] = "python -m benchmarks.lra_listops " + " ".join(argv if argv is not None else sys.argv[1:])
    env = {**common.environment(), "load_average_at_start": os.getloadavg()}
    header = {"benchmark": "lra_listops", "environment": env, "settings": settings,
              "budget": "equal training minutes per row: the loop's wall clock after compilation (evaluation and "
                        "checkpoints included, periodic evaluation not); SPT rows split it between pretraining and fine-tuning",
              "paper": "Tay et al. 2021, Long Range Arena, Table 1 (ListOps test accuracy)"}
    baselines = first_token_baselines(BUILDER_CONFIGS[args.builder_config], args.data_dir)
    header["baselines"] = {"what": "accuracy % of the most frequent label (majority) and of the most frequent "
                                   "label per outermost operator, counted on the first 20k training "
                                   "expressions (first_token: what reading the first token alone gives)",
                           **baselines}
    references = {"majority class (validation)": baselines["validation"]["majority"],
                  "first-token rule (validation)": baselines["validation"]["first_token"]}
    results = Results(json_path, header, fresh=args.fresh)
    title = (f"ListOps ({BUILDER_CONFIGS[args.builder_config]}), {args.budget_minutes:g} min per row, "
             f"{env['device_kind']}")
    for variant, spt in rows:
        name = f"{variant}+spt" if spt else variant
        if results.done(name, row_recipe(args, variant, spt)):
            print(f"=== {name}: finished earlier, kept", flush=True)
            continue
        print(f"=== {name}: {attention(variant, args)!r}, {args.budget_minutes:g} min", flush=True)
        try:
            row = {**run_row(args, variant, spt), "status": "done"}
        except Exception as err:  # noqa: BLE001 - record the failure, go on with the other rows
            row = {"row": name, "variant": variant, "status": "error",
                   "error": common.short_error(err)}
            print(f"{name} failed: {row['error']}", flush=True)
        results.put(row)
        results.save(csv_path, png_path, title, references)
    results.save(csv_path, png_path, title, references)  # the header and plot, also when every row was kept
    print(common.format_table(results.rows, COLUMNS))
    print(f"wrote {json_path}, {csv_path} and {png_path}")
    return {"settings": settings, "rows": results.rows}


if __name__ == "__main__":
    main()
