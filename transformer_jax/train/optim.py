"""Optimiser and learning-rate schedules, composed from small Optax pieces.

AdamW (Loshchilov & Hutter 2019) with decoupled weight decay on projection kernels only (chosen by
parameter name, not rank: no decay on biases of any shape, norm scales, embeddings or position
tables), after clipping by global norm (Pascanu et al. 2013).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("inverse_sqrt", "cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")


def inverse_sqrt_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
    """Vaswani et al. 2017, eq. (3): lr = scale · d_model^-0.5 · min(s^-0.5, s · warmup^-1.5).

    `s = count + 1` is the 1-based step number, so the first update uses a non-zero rate.
    """
    if warmup_steps <= 0:
        raise ValueError(f"schedule.warmup_steps must be positive for 'inverse_sqrt'; got {warmup_steps}")

    def schedule(count):
        s = jnp.asarray(count, jnp.float32) + 1.0
        return scale * d_model ** -0.5 * jnp.minimum(s ** -0.5, s * warmup_steps ** -1.5)

    return schedule


def warmup_cosine_schedule(peak: float, warmup_steps: int, total_steps: int, end: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `peak` over `warmup_steps`, then cosine to `end` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1), end)


def warmup_linear_schedule(peak: float, warmup_steps: int, total_steps: int, end: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `peak`, then linear decay to `end` at `total_steps`."""
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps),
         optax.linear_schedule(peak, end, max(total_steps - warmup_steps, 1))],
        [warmup_steps])


def make_schedule(name: str, *, learning_rate: float, warmup_steps: int, total_steps: int,
                  d_model: int = 512, end_learning_rate: float = 0.0) -> optax.Schedule:
    """Schedule by name. For 'inverse_sqrt' `learning_rate` is the paper's scale factor (1.0 in the paper)."""
    if name == "inverse_sqrt":
        return inverse_sqrt_schedule(d_model, warmup_steps, learning_rate)
    if name == "cosine":
        return warmup_cosine_schedule(learning_rate, warmup_steps, total_steps, end_learning_rate)
    if name == "linear":
        return warmup_linear_schedule(learning_rate, warmup_steps, total_steps, end_learning_rate)
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    raise ValueError(f"schedule.name={name!r} is not one of {', '.join(SCHEDULES)}")


DECAYED = "kernel"  # the one parameter name that gets weight decay


def leaf_name(path) -> str:
    """The parameter's own name: the last dict key of its tree path (flax boxes add `.value` after it)."""
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(keys[-1]) if keys else ""


def decay_mask(params):
    """True for parameters that get weight decay: those named `kernel` (projection weights).

    By name, not by rank: attention biases are [N, H] and embeddings [V, D], yet neither should
    decay (BERT/GPT practice; Loshchilov & Hutter decay the weights of linear maps). Parameters a
    model adds later (relative-position biases, type embeddings, ...) do not decay unless they are
    kernels.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: leaf_name(path) == DECAYED, params)


def make_optimizer(name: str, schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.0, clip_norm: float | None = 1.0,
                   momentum: float = 0.9) -> optax.GradientTransformation:
    """clip_by_global_norm → AdamW/Adam/SGD, with the learning rate given by `schedule`."""
    if name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    elif name == "adam":
        opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=momentum or None)
    else:
        raise ValueError(f"optimizer.name={name!r} is not one of {', '.join(OPTIMIZERS)}")
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    return optax.chain(*parts, opt)


def optimizer_from_config(opt_cfg, sched_cfg, *, total_steps: int, d_model: int
                          ) -> tuple[optax.GradientTransformation, Callable]:
    """Build (optimizer, schedule) from the `optimizer` and `schedule` sections of an experiment config."""
    schedule = make_schedule(sched_cfg.name, learning_rate=opt_cfg.learning_rate,
                             warmup_steps=sched_cfg.warmup_steps, total_steps=total_steps, d_model=d_model,
                             end_learning_rate=sched_cfg.get("end_learning_rate", 0.0))
    tx = make_optimizer(opt_cfg.name, schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                        weight_decay=opt_cfg.weight_decay, clip_norm=opt_cfg.clip_norm)
    return tx, schedule


def state_size(opt_state) -> int:
    """Numbers held in an optimiser state (under LoRA, `tx.init(adapters)`: adapter-sized)."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "size") and x.ndim > 0))
