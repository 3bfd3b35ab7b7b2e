"""Fine-tuned against from scratch at the same budget (issue 22): the library's own masked-LM
pretraining on the built-in `tjax_text` corpus (configs/mlm.py) serves as the pretrained checkpoint;
each task then trains the same architecture, with the same tokenizer (the pretraining's SentencePiece
model), data, schedule and number of steps, once from that checkpoint (`init_from`) and once from a
random initialisation.

    python benchmarks/finetune.py [--mlm_steps 600] [--steps 200] [--root /tmp/finetune_bench]

Tasks: sentence pairs (`tjax_pairs`, configs/finetune_classification.py: accuracy, macro-F1) and named
entities (`tjax_entities`, configs/finetune_ner.py: seqeval entity F1), scored on their test splits
by the evaluation `train` runs at the end (eval.json). Writes benchmarks/results/finetune_cpu.json
with the wall times, the machine's load and the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.common import environment, load_module, write_json  # noqa: E402

TASKS = {  # name -> (config file, built-in dataset, max_src_len, metric reported)
    "pairs": ("finetune_classification.py", "tjax_pairs", 64, "accuracy"),
    "ner": ("finetune_ner.py", "tjax_entities", 48, "f1"),
}


def mlm_config(steps: int):
    """configs/mlm.py with token-type embeddings (a pair's second text is type 1, as in BERT)."""
    c = load_module(os.path.join(REPO, "configs", "mlm.py"), "mlm").get_config()
    c.model.type_vocab_size = 2
    c.num_train_steps = steps
    c.schedule.warmup_steps = max(1, steps // 10)
    c.eval_every, c.best_metric = 0, ""
    c.checkpoint_every = steps
    return c


def task_config(name: str, steps: int, *, init_from: str = "", architecture=None, lr: float = 5e-4):
    """A fine-tuning config on a built-in dataset: `steps` steps of batch 32; from `init_from`, or
    from scratch with `architecture` (the pretrained model's config.model)."""
    cfg_file, dataset, length, _ = TASKS[name]
    c = load_module(os.path.join(REPO, "configs", cfg_file), cfg_file[:-3]).get_config()
    c.data.update(train_files=f"{dataset}:train", validation_files=f"{dataset}:validation",
                  test_files=f"{dataset}:test", max_src_len=length, vocab_size=2000)
    c.num_epochs, c.num_train_steps, c.batch_size = 0, steps, 32
    c.optimizer.learning_rate = lr
    c.schedule.warmup_steps = max(1, steps // 10)
    c.log_every = max(1, steps // 5)
    c.checkpoint_every = steps
    if init_from:
        c.init_from = init_from
    else:
        c.scratch_model = architecture
    return c


def run(config, workdir: str, *, fresh: bool = True) -> dict:
    """Train in `workdir` (emptied first when `fresh`): the wall seconds and eval.json's test result."""
    from transformer_jax.train import loop

    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.time()
    loop.train(config, workdir, progress=False)
    seconds = time.time() - t0
    with open(os.path.join(workdir, "eval.json")) as f:
        return {"wall_seconds": seconds, "test": json.load(f)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/tmp/finetune_bench")
    ap.add_argument("--mlm_steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "finetune_cpu.json"))
    args = ap.parse_args(argv)

    from transformer_jax.data import sentencepiece_path

    os.makedirs(args.root, exist_ok=True)
    t_start, load = time.time(), {"start": os.getloadavg()}
    mlm_dir = os.path.join(args.root, "mlm")
    mlm = mlm_config(args.mlm_steps)
    pretrain = run(mlm, mlm_dir)
    spm = sentencepiece_path(mlm_dir, mlm.data.dataset, mlm.data.vocab_size, ("[MASK]",))
    rows = []
    for name in args.tasks.split(","):
        metric = TASKS[name][3]
        tuned_dir, scratch_dir = os.path.join(args.root, f"{name}_tuned"), os.path.join(args.root, f"{name}_scratch")
        tuned = run(task_config(name, args.steps, init_from=mlm_dir, lr=args.lr), tuned_dir)
        shutil.rmtree(scratch_dir, ignore_errors=True)
        os.makedirs(scratch_dir)  # the same tokenizer: the pretraining's SentencePiece model
        shutil.copyfile(spm, sentencepiece_path(scratch_dir, "files", 2000))
        scratch_cfg = task_config(name, args.steps, architecture=mlm.model, lr=args.lr)
        scratch = run(scratch_cfg, scratch_dir, fresh=False)
        rows.append({"task": name, "dataset": TASKS[name][1], "metric": metric, "steps": args.steps,
                     "batch_size": 32, "learning_rate": args.lr,
                     "fine_tuned": {metric: tuned["test"][metric], "wall_seconds": tuned["wall_seconds"],
                                    "test": tuned["test"]},
                     "from_scratch": {metric: scratch["test"][metric], "wall_seconds": scratch["wall_seconds"],
                                      "test": scratch["test"]}})
        print(f"{name}: {metric} fine-tuned {tuned['test'][metric]:.4f}, from scratch {scratch['test'][metric]:.4f}",
              flush=True)
    load["end"] = os.getloadavg()
    out = {"pretraining": {"config": "configs/mlm.py (+ model.type_vocab_size=2)", "dataset": "tjax_text",
                           "steps": args.mlm_steps, "wall_seconds": pretrain["wall_seconds"],
                           "test": pretrain["test"]},
           "rows": rows, "wall_seconds": time.time() - t_start, "load_average": load,
           "environment": environment(),
           "note": "2-core CPU shared with other jobs (4 workers); wall times include compilation and the "
                   "end-of-run test evaluation"}
    write_json(args.out, out)
    print(json.dumps({r["task"]: {k: r[k][r["metric"]] for k in ("fine_tuned", "from_scratch")} for r in rows}))


if __name__ == "__main__":
    main()
