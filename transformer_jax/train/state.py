"""Train state, created already sharded.

Following flax/examples/lm1b: the state is described abstractly with `jax.eval_shape`, its
logical axis annotations are resolved to `NamedSharding`s through the one rules table, and the
real state is materialised by `jit(init, out_shardings=...)` so no device ever holds a full copy.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from transformer_jax import sharding as shd
from transformer_jax import tasks


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: step count, params, optimiser state, base rng (raw uint32 key);
    and, with LoRA, the frozen base it does not change.

    The dropout rng of step s is `fold_in(rng, s)`: it depends only on the step, so a resumed run
    draws the same masks as an uninterrupted one. With LoRA (train/adapters.py) `params` are the
    adapters (and any parameters trained in full), `opt_state` is theirs alone, and `frozen` holds
    the base parameters the model runs on after `lora.merge_lora(frozen, params, ...)`; it is an
    argument of the compiled step like the rest (sharded, never a baked-in constant).
    """

    step: jax.Array  # int32 []
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2]
    frozen: Any = None


def _boxed_init(model: nn.Module, tx: optax.GradientTransformation, example_batch: dict[str, Any], task,
                lora=None, full=()):
    shapes = {k: jax.ShapeDtypeStruct(np.shape(v), getattr(v, "dtype", np.asarray(v).dtype))
              for k, v in example_batch.items()}
    task = tasks.for_model(model) if task is None else task

    def boxed_init(seed_key):
        params_key, dropout_key = jax.random.split(seed_key)
        zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
        args, kwargs = task.model_inputs(zeros)
        params = model.init({"params": params_key}, *args, **kwargs, deterministic=True)["params"]
        frozen = None
        if lora is not None:  # the adapters are what trains; the base is kept aside
            from transformer_jax.lora import init_lora

            frozen, params = params, init_lora(jax.random.fold_in(params_key, 1), params, lora, full=full)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=dropout_key, frozen=frozen)

    return boxed_init


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, example_batch: dict[str, Any],
                         mesh: Mesh, rules=shd.LOGICAL_RULES, task=None, lora=None,
                         full=()) -> tuple[TrainState, TrainState]:
    """(shapes, shardings) of the train state, traced but never compiled or materialised: what a
    checkpoint is restored into. `task` (default: the model's own, `tasks.for_model`) says which
    batch entries the model reads; `lora` (a LoraConfig) and `full` as for `create_train_state`."""
    boxed = jax.eval_shape(_boxed_init(model, tx, example_batch, task, lora, full), jax.random.PRNGKey(0))
    return nn.meta.unbox(boxed), shd.logical_shardings(boxed, mesh, rules)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, example_batch: dict[str, Any],
                       mesh: Mesh, seed: int = 0, rules=shd.LOGICAL_RULES, task=None, lora=None,
                       full=()) -> tuple[TrainState, TrainState]:
    """Initialise (state, state_shardings) directly sharded on `mesh`.

    `example_batch` may be shapes only; its values are never used (the model is initialised on zeros).
    With `lora` (a LoraConfig), `params` are fresh adapters (plus copies of the parameters named in
    `full`, trained whole), `frozen` the model's initial parameters, the optimiser state the
    adapters' alone; adapters are placed like their kernels (lora.init_lora).
    """
    boxed_init = _boxed_init(model, tx, example_batch, task, lora, full)
    key = jax.random.PRNGKey(seed)
    # Traced without a mesh in scope: placement comes from out_shardings alone. (With a mesh in
    # scope, flax's DenseGeneral re-boxes a reshaped kernel and constrains it with the wrong rank.)
    abstract = jax.eval_shape(boxed_init, key)
    shardings = shd.logical_shardings(abstract, mesh, rules)
    init = jax.jit(lambda k: nn.meta.unbox(boxed_init(k)), out_shardings=shardings)
    state = init(key)
    return state, shardings


def abstract_state(state_or_shapes: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying target shardings: what `checkpoint.restore` fills in."""
    # optax.MaskedNode (no leaves) stands where a frozen parameter has no optimiser state
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    return jax.tree.map(lambda x, s: x if masked(x) else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state_or_shapes, shardings, is_leaf=masked)
