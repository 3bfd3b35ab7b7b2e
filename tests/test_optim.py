"""Schedules against their closed forms, the weight-decay mask, the loss against a NumPy reference,
and gradient accumulation over micro-batches against one large batch."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import Transformer, tiny
from transformer_jax import sharding as shd
from transformer_jax.train import optim
from transformer_jax.train.loss import cross_entropy_sums
from transformer_jax.train.state import create_train_state
from transformer_jax.train.step import StepConfig, jit_train_step, make_train_step
from transformer_jax.train.synthetic import SyntheticIterator


@pytest.mark.parametrize("step", [0, 1, 99, 3999, 4000, 10_000, 99_999])
def test_inverse_sqrt_matches_vaswani(step):
    sched = optim.make_schedule("inverse_sqrt", learning_rate=1.0, warmup_steps=4000, total_steps=0, d_model=512)
    s = step + 1  # the paper's step number is 1-based
    expected = 512 ** -0.5 * min(s ** -0.5, s * 4000 ** -1.5)
    np.testing.assert_allclose(float(sched(step)), expected, rtol=1e-6)


@pytest.mark.parametrize("step", [0, 50, 100, 101, 550, 1000, 1200])
def test_warmup_cosine_and_linear_closed_form(step):
    peak, warm, total, end = 3e-3, 100, 1000, 1e-4
    if step <= warm:
        want_cos = want_lin = peak * step / warm
    else:
        frac = min((step - warm) / (total - warm), 1.0)
        want_cos = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))
        want_lin = peak + (end - peak) * frac
    cos = optim.make_schedule("cosine", learning_rate=peak, warmup_steps=warm, total_steps=total, end_learning_rate=end)
    lin = optim.make_schedule("linear", learning_rate=peak, warmup_steps=warm, total_steps=total, end_learning_rate=end)
    np.testing.assert_allclose(float(cos(step)), want_cos, rtol=1e-5)
    np.testing.assert_allclose(float(lin(step)), want_lin, rtol=1e-5)


def test_unknown_names_are_rejected_with_valid_choices():
    with pytest.raises(ValueError, match="schedule.name='poly'.*inverse_sqrt"):
        optim.make_schedule("poly", learning_rate=1.0, warmup_steps=1, total_steps=2)
    with pytest.raises(ValueError, match="optimizer.name='lamb'.*adamw"):
        optim.make_optimizer("lamb", optim.make_schedule("constant", learning_rate=1.0, warmup_steps=0, total_steps=1))


def test_weight_decay_only_on_kernels_by_name():
    """Decay follows the parameter's name, not its rank: a [N, H] attention bias, embeddings and
    position tables stay put; only `kernel`s shrink (issue 15: q/k/v biases were decayed)."""
    rng = np.random.default_rng(0)
    shapes = {"kernel": (3, 4), "bias": (2, 4), "scale": (4,), "embedding": (7, 4), "pos_embedding": (5, 4),
              "relative_bias": (2, 8), "token_type_embedding": (2, 4), "logits_bias": (7,)}
    params = {"query": {k: jnp.asarray(rng.normal(size=v), jnp.float32) for k, v in shapes.items()}}
    tx = optim.make_optimizer("adamw", optim.make_schedule("constant", learning_rate=0.1, warmup_steps=0,
                                                           total_steps=1), weight_decay=0.5, clip_norm=None)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)  # zero gradient: only decay moves params
    np.testing.assert_allclose(updates["query"]["kernel"], -0.1 * 0.5 * params["query"]["kernel"], rtol=1e-6)
    for name in shapes:
        if name != "kernel":
            np.testing.assert_array_equal(updates["query"][name], 0.0, err_msg=name)


def test_decay_mask_on_a_real_model_marks_exactly_the_kernels():
    """On a model's (boxed, as `tx.init` sees them) parameters: every kernel decays, nothing else does,
    and the model does have non-kernel parameters of rank >= 2 (q/k/v biases, the embedding)."""
    model = Transformer(tiny(num_encoder_layers=1, num_decoder_layers=1))
    tokens = jnp.ones((1, 4), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"]  # shapes suffice
    for params in (boxed, nn.meta.unbox(boxed)):
        mask = optim.decay_mask(params)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        flags = jax.tree.leaves(mask)
        assert len(flags) == len(flat)
        names = [optim.leaf_name(path) for path, _ in flat]
        assert flags == [n == "kernel" for n in names]
        assert any(n != "kernel" and leaf.ndim >= 2 for n, (_, leaf) in zip(names, flat))
        assert sum(flags) >= 8


@pytest.mark.parametrize("smoothing,z_loss", [(0.0, 0.0), (0.1, 0.0), (0.1, 1e-3)])
def test_loss_matches_float64_reference(smoothing, z_loss):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 11)) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float64)
    out = cross_entropy_sums(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(weights),
                             label_smoothing=smoothing, z_loss=z_loss)
    log_z = np.log(np.exp(logits).sum(-1))
    log_p = logits - log_z[..., None]
    v = logits.shape[-1]
    soft = np.full(logits.shape, smoothing / (v - 1))
    np.put_along_axis(soft, targets[..., None], 1 - smoothing, axis=-1)
    entropy = -np.sum(np.where(soft > 0, soft * np.log(np.where(soft > 0, soft, 1)), 0), -1)
    loss = -np.sum(soft * log_p, -1) - entropy + z_loss * log_z ** 2
    np.testing.assert_allclose(float(out["loss"]), np.sum(loss * weights), rtol=1e-5)
    np.testing.assert_allclose(float(out["weight"]), weights.sum())
    onehot = np.zeros(logits.shape)
    np.put_along_axis(onehot, targets[..., None], 1.0, axis=-1)
    np.testing.assert_allclose(float(out["nll"]), np.sum(-np.sum(onehot * log_p, -1) * weights), rtol=1e-5)
    np.testing.assert_allclose(float(out["correct"]), np.sum((logits.argmax(-1) == targets) * weights))
    # the custom VJP against the closed form: dL/dx = w·(p·(1 + 2·z·logZ) - soft), dNLL/dx = w·(p - onehot)
    p = np.exp(log_p)
    for key, want in (("loss", p * (1 + 2 * z_loss * log_z[..., None]) - soft), ("nll", p - onehot)):
        got = jax.grad(lambda x, key=key: cross_entropy_sums(x, jnp.asarray(targets), jnp.asarray(weights),
                                                             label_smoothing=smoothing, z_loss=z_loss)[key])(
            jnp.asarray(logits, jnp.float32))
        np.testing.assert_allclose(np.asarray(got), want * weights[..., None], atol=2e-6)


def test_gradient_accumulation_equals_one_large_batch():
    """4 micro-batches of 4 give the gradient of one batch of 16 (loss normalised over all tokens).

    Plain SGD makes the update proportional to the gradient (Adam would amplify rounding in ~0 gradients).
    """
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = Transformer(tiny(dropout_rate=0.0, num_encoder_layers=1, num_decoder_layers=1))
    sched = optim.make_schedule("constant", learning_rate=1.0, warmup_steps=0, total_steps=1)
    tx = optim.make_optimizer("sgd", sched, momentum=0.0, clip_norm=None)
    batch = next(SyntheticIterator(global_batch_size=16, max_len=12, vocab_size=64, seed=3))
    state, shardings = create_train_state(model, tx, batch, mesh, seed=1)
    results = {}
    for micro in (1, 4):
        fn = make_train_step(model, tx, sched, StepConfig(micro_batches=micro, label_smoothing=0.1))
        with shd.activate(mesh):
            jitted, _ = jit_train_step(fn, shardings, batch, mesh)
            new, metrics = jitted(jax.tree.map(jnp.copy, state), shd.shard_batch(batch, mesh))
        results[micro] = jax.device_get((new.params, metrics))
    (p1, m1), (p4, m4) = results[1], results[4]
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
    assert m4["tokens"] == m1["tokens"]
    p0 = jax.device_get(state.params)
    jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a - c, b - c, rtol=1e-4, atol=1e-7), p4, p1, p0)

