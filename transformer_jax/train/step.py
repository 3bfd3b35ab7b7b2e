"""Pure train and eval steps, and their sharded compilation.

`train_step(state, batch) -> (state, metrics)` is a pure function: same state and batch, same
result, bit for bit on CPU. That is what makes kill-and-resume exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from transformer_jax import sharding as shd
from transformer_jax.lora import merge_lora
from transformer_jax.moe import AUX_LOSS, METRICS
from transformer_jax.train.loss import cross_entropy_sums
from transformer_jax import tasks
from transformer_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Loss and step settings (the scalars the step uses, nothing else)."""

    micro_batches: int = 1  # gradient accumulation: the batch is split and scanned over
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    skip_nonfinite: bool = False  # True: keep the old params/opt state on a non-finite step
    lora: Any = None  # a lora.LoraConfig: state.params are adapters over the base in state.frozen


def _loss_sums(model: nn.Module, params, batch, rng, *, deterministic: bool, cfg: StepConfig, task=None,
               extra: Callable | None = None):
    """The task (default: the model's own, `tasks.for_model`) splits the batch into model inputs and
    targets with loss weights. In training, the auxiliary losses layers sow (the MoE load-balance
    and router z-losses) join the loss; evaluation reports the plain cross-entropy. `extra(outputs,
    batch, sums) -> sums` wraps the task's loss (distillation's soft targets, train/distill.py)."""
    task = tasks.for_model(model) if task is None else task
    args, kwargs = task.model_inputs(batch)
    rngs = None if deterministic else {"dropout": rng}
    logits, sown = model.apply({"params": params}, *args, **kwargs, deterministic=deterministic, rngs=rngs,
                               mutable=[] if deterministic else [AUX_LOSS, METRICS])
    def cross_entropy(logits, targets, weights):
        return cross_entropy_sums(logits, targets, weights, label_smoothing=cfg.label_smoothing, z_loss=cfg.z_loss)

    loss_sums = getattr(task, "loss_sums", None)  # a task with its own loss (regression, QA spans)
    if loss_sums is not None:
        sums = loss_sums(logits, batch, cross_entropy)
    else:
        sums = cross_entropy(logits, *task.targets_and_weights(batch))
    return _with_aux(sums if extra is None else extra(logits, batch, sums), sown)


def _with_aux(sums: dict, sown: dict) -> dict:
    """Add what the layers sowed to the loss sums: the `aux_loss` collection's terms (per-batch means,
    already weighted by their coefficients, moe.py) scaled by the token count like the summed
    cross-entropy, so gradient accumulation averages them; and each `moe_metrics` value (the mean
    over layers) as `moe_<name>`. A model that sows nothing gets the sums back unchanged."""
    if not sown:
        return sums
    weight = sums["weight"]
    aux = sum(jnp.sum(x) for x in jax.tree.leaves(sown.get(AUX_LOSS, {})))
    out = {**sums, "loss": sums["loss"] + aux * weight, "aux_loss": aux * weight}
    by_name: dict[str, list] = {}
    for path, x in jax.tree_util.tree_leaves_with_path(sown.get(METRICS, {})):
        name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
        by_name.setdefault(name, []).append(jnp.ravel(x))  # scanned layers sow a stacked value
    for name, values in by_name.items():
        out[f"moe_{name}"] = jnp.mean(jnp.concatenate(values)) * weight
    return out


def _split_micro(x: jax.Array, micro: int) -> jax.Array:
    """[B ...] -> [M B/M ...], micro-batch m = rows m, m+M, m+2M, ...

    Interleaving keeps each device's contiguous block of rows spread over all micro-batches,
    so the split needs no communication.
    """
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // micro, micro, *x.shape[1:]), 0, 1)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: Callable,
                    cfg: StepConfig = StepConfig(), task=None,
                    teacher=None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The pure training step: forward, backward (accumulated over micro-batches), clip, update.

    The loss is normalised once over the non-pad tokens of the whole batch, so M micro-batches of
    B/M equal one batch of B (up to float rounding), and memory is that of one micro-batch.
    With a `teacher` (train/distill.py) the step is `train_step(state, batch, teacher_params)`: the
    teacher's forward runs inside it and its soft targets join the loss.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_params=None) -> tuple[TrainState, dict]:
        step_rng = jax.random.fold_in(state.rng, state.step)

        def model_params(params):  # with LoRA: base + (alpha/r)·AB; gradients reach the adapters only
            if cfg.lora is None:
                return params
            return merge_lora(jax.lax.stop_gradient(state.frozen), params, cfg.lora)

        extra = None if teacher is None else teacher.loss_hook(tasks.for_model(model) if task is None else task,
                                                               teacher_params)

        def micro_loss(params, mb, index):
            sums = _loss_sums(model, model_params(params), mb, jax.random.fold_in(step_rng, index),
                              deterministic=False, cfg=cfg, task=task, extra=extra)
            return sums["loss"], sums

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
        if cfg.micro_batches == 1:
            (_, sums), grads = grad_fn(state.params, batch, 0)
        else:
            micro = jax.tree.map(lambda x: _split_micro(x, cfg.micro_batches), batch)

            def body(carry, xs):
                index, mb = xs
                (_, s), g = grad_fn(state.params, mb, index)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            first = jax.tree.map(lambda x: x[0], micro)
            zero_sums = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),  # the keys _loss_sums returns
                                     jax.eval_shape(micro_loss, state.params, first, 0)[1])
            (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums),
                                            (jnp.arange(cfg.micro_batches), micro))

        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = sums["loss"] / denom
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if cfg.skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {"loss": loss, "nll": sums["nll"] / denom, "accuracy": sums["correct"] / denom,
                   "tokens": sums["weight"], "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "finite": finite}
        metrics |= {k: sums[k] / denom for k in sums if k not in ("loss", "nll", "weight", "correct")}
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module, cfg: StepConfig = StepConfig(), task=None) -> Callable[[Any, dict], dict]:
    """Pure eval step on params: summed loss/NLL/correct/token count (sum across batches, then divide)."""

    def eval_step(params, batch):
        return _loss_sums(model, params, batch, None, deterministic=True, cfg=cfg, task=task)

    return eval_step


def jit_train_step(train_step: Callable, state_shardings: TrainState, batch_shapes: dict, mesh: Mesh,
                   teacher_shardings=None):
    """jit with explicit in/out shardings and the state donated (updated in place); with
    `teacher_shardings`, the teacher's parameters are a third argument placed so (never donated).

    Returns (jitted, batch_shardings); trace and call under `sharding.activate(mesh)` so logical constraints apply.
    """
    batch_shardings = shd.batch_spec_tree(batch_shapes, mesh)
    teacher = () if teacher_shardings is None else (teacher_shardings,)
    jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings, *teacher),
                     out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)
    return jitted, batch_shardings


def jit_eval_step(eval_step: Callable, params_shardings, batch_shapes: dict, mesh: Mesh):
    batch_shardings = shd.batch_spec_tree(batch_shapes, mesh)
    return jax.jit(eval_step, in_shardings=(params_shardings, batch_shardings), out_shardings=shd.replicated(mesh))
