"""Evaluation: loss/accuracy/perplexity over an iterator, translation with BLEU, prompt continuation.

Which of these a run reports at its end is the task's choice (`Task.final_eval`, tasks.py).
Each takes `params` as the model runs on them (`Setup.eval_params`: with LoRA, merged) or as
`tj.quantize` returns them (int8 / 16-bit weights, scaled back inside the compiled call).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np

from transformer_jax import sharding as shd
from transformer_jax.config import BOS_ID, EOS_ID
from transformer_jax.data.pipeline import length_sorted
from transformer_jax.quantization import QuantizedVariables, dequantize
from transformer_jax.train.build import Setup, make_data_iterator, step_config, text_keys
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


def model_params(params):
    """The parameter tree `model.apply` takes: quantized variables dequantized (call inside jit, so
    they stay int8 / 16-bit in memory), anything else as it is."""
    return dequantize(params)["params"] if isinstance(params, QuantizedVariables) else params


def evaluate_split(s: Setup, params, split: str) -> dict[str, Any]:
    """`evaluate_loss` over a whole split (the task's layout, unpacked, masks seeded as in training)."""
    t0 = time.time()
    iterator = make_data_iterator(s.config, split, s.tokenizer, repeat=False, task=s.task)
    result = evaluate_loss(s, params, iterator)
    return {"split": split, "seconds": time.time() - t0,
            **{k.removeprefix("eval_"): v for k, v in result.items()}}


def translate(s: Setup, params, sources: list[str], *, beam_size: int, max_len: int,
              length_penalty: float, batch_size: int) -> list[str]:
    """Beam-search translations of `sources` (strings) with `transformer_jax.generate`."""
    from transformer_jax.decode import generate

    src_len = s.config.data.max_src_len
    outputs = []
    replicated = shd.replicated(s.mesh)
    params = jax.device_put(params, jax.tree.map(lambda _: replicated, params))
    gen = jax.jit(lambda p, src: generate(s.model, {"params": model_params(p)}, src, max_len=max_len,
                                          beam_size=beam_size, length_penalty=length_penalty))
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        src = np.zeros((batch_size, src_len), np.int32)
        for r, text in enumerate(chunk):
            ids = list(s.tokenizer.encode(text))[: src_len - 1] + [EOS_ID]
            src[r, : len(ids)] = ids
        with shd.activate(s.mesh):
            out = np.asarray(jax.device_get(gen(params, jax.device_put(src, replicated))))
        outputs += [s.tokenizer.decode(row.tolist()) for row in out[: len(chunk)]]
    return outputs


def continue_text(s: Setup, params, prompts: list[str], *, max_new_tokens: int, beam_size: int = 1,
                  batch_size: int = 16) -> list[str]:
    """Continuations of `prompts` (strings) by a causal LM, with `transformer_jax.generate` (greedy,
    or beam search); each prompt starts with BOS, as the training rows do."""
    from transformer_jax.decode import generate

    encoded = [[BOS_ID] + list(s.tokenizer.encode(p)) for p in prompts]
    width = max(len(e) for e in encoded) if encoded else 1
    room = s.model.cfg.max_len + 1 - max_new_tokens
    if width > room:
        raise ValueError(f"a prompt of {width} tokens plus --max_new_tokens={max_new_tokens} exceeds the model's "
                         f"max_len={s.model.cfg.max_len}; shorten the prompt or ask for fewer tokens")
    replicated = shd.replicated(s.mesh)
    params = jax.device_put(params, jax.tree.map(lambda _: replicated, params))
    gen = jax.jit(lambda p, x, n: generate(s.model, {"params": model_params(p)}, x, max_new_tokens=max_new_tokens,
                                           beam_size=beam_size, prompt_lengths=n))
    outputs = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        tokens = np.zeros((batch_size, width), np.int32)
        lengths = np.ones((batch_size,), np.int32)
        for r, ids in enumerate(chunk):
            tokens[r, : len(ids)], lengths[r] = ids, len(ids)
        with shd.activate(s.mesh):
            out = np.asarray(jax.device_get(gen(params, jax.device_put(tokens, replicated),
                                                jax.device_put(lengths, replicated))))
        for row, n in zip(out[: len(chunk)], lengths):
            outputs.append(s.tokenizer.decode(row[n:].tolist()))
    return outputs


def evaluate_bleu(s: Setup, params, split: str) -> dict[str, Any]:
    """Corpus BLEU (sacrebleu) of beam-search translations of a translation task's `split`."""
    from transformer_jax import data

    dc = s.config.decode
    pairs = list(data.eval_pairs(s.config.data.task, split, data_dir=s.config.data.data_dir or None,
                                 text_keys=text_keys(s.config), max_examples=dc.max_examples or None))
    sources, references = [p[0] for p in pairs], [p[1] for p in pairs]
    t0 = time.time()
    hyps = translate(s, params, sources, beam_size=dc.beam_size, max_len=min(dc.max_len, s.model.cfg.max_len),
                     length_penalty=dc.length_penalty, batch_size=dc.batch_size)
    bleu, signature = data.corpus_bleu(hyps, references)
    return {"split": split, "bleu": bleu, "signature": signature, "examples": len(pairs),
            "beam_size": dc.beam_size, "seconds": time.time() - t0,
            "samples": [{"source": a, "reference": b, "hypothesis": c}
                        for a, b, c in list(zip(sources, references, hyps))[:5]]}


def summary_line(result: dict[str, Any]) -> str:
    """One log line for an end-of-run result."""
    if "bleu" in result:
        return (f"BLEU {result['bleu']:.2f} on {result['split']} ({result['examples']} sentences, "
                f"beam {result['beam_size']}) | {result['signature']}")
    keys = [k for k in ("accuracy", "perplexity", "nll") if k in result]
    return f"{result['split']}: " + ", ".join(f"{k} {result[k]:.4f}" for k in keys)
