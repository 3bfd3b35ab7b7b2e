"""Evaluation in the trainer: loss/accuracy/perplexity over an iterator, and the task's own end-of-run
metrics, which it computes from a narrow `tasks.Predictor` (model, params, tokenizer, mesh).

Which of these a run reports at its end is the task's choice (`Task.evaluate`, transformer_jax/tasks/).
Each takes `params` as the model runs on them (`Setup.eval_params`: with LoRA, merged) or as
`tj.quantize` returns them (int8 / 16-bit weights, scaled back inside the compiled call).
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any

import jax

from transformer_jax import sharding as shd
from transformer_jax.data.pipeline import length_sorted
from transformer_jax.quantization import QuantizedVariables
from transformer_jax.tasks.predictor import Predictor, model_params
from transformer_jax.train.build import Setup, make_data_iterator, split_records, step_config
from transformer_jax.train.step import jit_eval_step, make_eval_step


def evaluate_loss(s: Setup, params, eval_iter, max_batches: int = 0) -> dict[str, float]:
    """Mean loss / NLL / accuracy / perplexity over the weighted targets of (up to `max_batches` of)
    an iterator. For a masked LM the targets are the selected tokens only, so the accuracy is the
    masked-token accuracy; for a classifier they are the labels."""
    quantized = isinstance(params, QuantizedVariables)
    cache = s.__dict__.setdefault("_eval_fns", {})  # one jit per setup: a new one per call recompiles
    if quantized not in cache:  # at every evaluation, which a time budget would pay for each time
        step = make_eval_step(s.model, step_config(s.config), task=s.task)
        placed = s.param_shardings if not quantized else \
            jax.tree.map(lambda x: x.sharding, params)  # quantized: as tj.quantize placed them
        cache[quantized] = jit_eval_step(lambda p, batch: step(model_params(p), batch), placed, s.example, s.mesh)
    fn = cache[quantized]
    if trims_padding(s):
        eval_iter = length_sorted(eval_iter, s.task.trim_keys)
    totals: dict[str, float] = {}
    with shd.activate(s.mesh):
        for i, batch in enumerate(eval_iter):
            if max_batches and i >= max_batches:
                break
            sums = jax.device_get(fn(params, shd.shard_batch(batch, s.mesh)))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
    w = max(totals.get("weight", 0.0), 1.0)
    nll = totals.get("nll", 0.0) / w
    return {"eval_loss": totals.get("loss", 0.0) / w, "eval_nll": nll,
            "eval_accuracy": totals.get("correct", 0.0) / w, "eval_perplexity": math.exp(min(nll, 80.0)),
            "eval_tokens": totals.get("weight", 0.0)}


def trims_padding(s: Setup) -> bool:
    """Whether evaluation regroups batches by length and trims their padding (`length_sorted`):
    a task with variable-length rows, a model that ignores trailing padding, one process."""
    cfg = getattr(s.model, "cfg", None)
    return bool(s.task.trim_keys) and getattr(cfg, "length_invariant", False) and jax.process_count() == 1


def evaluate_split(s: Setup, params, split: str) -> dict[str, Any]:
    """`evaluate_loss` over a whole split (the task's layout, unpacked, masks seeded as in training)."""
    t0 = time.time()
    iterator = make_data_iterator(s.config, split, s.tokenizer, repeat=False, task=s.task)
    result = evaluate_loss(s, params, iterator)
    return {"split": split, "seconds": time.time() - t0,
            **{k.removeprefix("eval_"): v for k, v in result.items()}}


def predictor(s: Setup, params) -> Predictor:
    """What a task's evaluation and prediction receive: model, params, tokenizer, mesh."""
    return Predictor(s.model, params, s.tokenizer, s.mesh)


def settings(s: Setup) -> SimpleNamespace:
    """The generation settings of a run (config.decode) and its source length."""
    dc = s.config.decode
    return SimpleNamespace(beam_size=dc.beam_size, max_len=dc.max_len, length_penalty=dc.length_penalty,
                           batch_size=dc.batch_size, max_examples=dc.max_examples,
                           max_src_len=s.config.data.max_src_len, max_tgt_len=s.config.data.max_tgt_len)


def final_eval(s: Setup, params, split: str) -> dict[str, Any]:
    """The task's end-of-run evaluation on `split`: its prediction metrics (`Task.evaluate`: BLEU,
    ...) on the split's records, or, for a task without any, the loss evaluation."""
    if s.task.evaluate is None:
        return evaluate_split(s, params, split)
    opts = settings(s)
    records = split_records(s.config, split, s.task, opts.max_examples or None)
    return {"split": split, **s.task.evaluate(predictor(s, params), records, opts)}


def evaluate_bleu(s: Setup, params, split: str) -> dict[str, Any]:
    """Corpus BLEU (sacrebleu) of beam-search translations of a translation task's `split`."""
    return final_eval(s, params, split)


def summary_line(result: dict[str, Any]) -> str:
    """One log line for an end-of-run result."""
    if "bleu" in result and "signature" in result:
        return (f"BLEU {result['bleu']:.2f} on {result['split']} ({result['examples']} sentences, "
                f"beam {result['beam_size']}) | {result['signature']}")
    keys = [k for k in ("accuracy", "f1", "exact_match", "precision", "recall", "pearson", "spearman", "rouge1",
                        "rouge2", "rougeL", "bleu", "perplexity", "nll") if k in result]
    return f"{result['split']}: " + ", ".join(f"{k} {result[k]:.4f}" for k in keys)
