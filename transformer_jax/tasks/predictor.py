"""The narrow thing a task's evaluation and prediction receive: a model, its parameters, a tokenizer
and a mesh; never the trainer's whole setup."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from transformer_jax import sharding as shd
from transformer_jax.quantization import QuantizedVariables, dequantize


def model_params(params):
    """The parameter tree `model.apply` takes: quantized variables dequantized (call inside jit, so
    they stay int8 / 16-bit in memory), anything else as it is."""
    return dequantize(params)["params"] if isinstance(params, QuantizedVariables) else params


@dataclasses.dataclass(frozen=True)
class Predictor:
    """model: a Flax module; params: its parameter tree (or `tj.quantize`'s variables); tokenizer:
    the run's (None for images); mesh: where to run."""

    model: Any
    params: Any
    tokenizer: Any
    mesh: Any

    def replicated(self):
        """The parameters placed whole on every device (generation runs unsharded)."""
        spec = shd.replicated(self.mesh)
        return jax.device_put(self.params, jax.tree.map(lambda _: spec, self.params)), spec


def featurized(task, tokenizer, records, settings) -> list[dict]:
    """`records` through the task's `featurize` (truncating to the settings' lengths), in order;
    a record the task drops is an error naming its index."""
    from transformer_jax.data.pipeline import Featurizer
    from transformer_jax.data.stats import DataStats

    fz = Featurizer(task, tokenizer, settings.max_src_len, settings.max_tgt_len, "truncate", DataStats())
    out = []
    for i, record in enumerate(records):
        ex = fz(record)
        if ex is None:
            raise ValueError(f"record {i} gives no input for a {task.name} task (empty text?)")
        out.append(ex)
    return out


def run_model(p: Predictor, task, examples: list[dict], settings):
    """The model's outputs for `examples` (featurized), batch by batch: padded rows in the task's
    layout, `task.model_inputs`, one jitted apply; yields NumPy outputs cut to the real rows (a tuple
    of arrays for models with several outputs)."""
    import numpy as np

    batch_size = settings.batch_size
    apply = jax.jit(lambda q, args, kwargs: p.model.apply({"params": model_params(q)}, *args, **kwargs,
                                                          deterministic=True))
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        rows = [task.pad(ex, settings.max_src_len, settings.max_tgt_len) for ex in chunk]
        rows += [jax.tree.map(np.zeros_like, rows[0])] * (batch_size - len(chunk))  # fixed shapes: one compile
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        args, kwargs = task.model_inputs(batch)
        with shd.activate(p.mesh):
            out = jax.device_get(apply(p.params, args, kwargs))
        yield jax.tree.map(lambda x: np.asarray(x)[: len(chunk)], out)
