"""Label-smoothed cross-entropy with optional z-loss, as sums (normalised by the caller).

Losses are returned as *sums* over tokens together with the token count, so that gradient
accumulation over micro-batches and data parallelism both normalise once, over all non-pad
tokens of the global batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                       label_smoothing: float = 0.0, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Sums of the training loss, the plain NLL, the token count and the correct predictions.

    logits [B T V] (or [B V] for classification), targets [B T] int (or [B]), weights like targets.

    Label smoothing (Szegedy et al. 2016; Vaswani et al. 2017 §5.4 with ε=0.1): the target puts
    1-ε on the true class and ε/(V-1) on each other class. The constant entropy of that target is
    subtracted, so a perfect model has loss 0 (as in flax/examples/wmt).
    z-loss (PaLM, Chowdhery et al. 2022): z_loss · log²Z keeps the softmax normaliser near 1.
    A prediction is correct when the target's logit is the largest (ties count as correct).
    """
    weights = weights.astype(jnp.float32)
    loss, nll, correct = _token_losses(float(label_smoothing), float(z_loss), logits, targets)
    return {"loss": jnp.sum(loss * weights), "nll": jnp.sum(nll * weights),
            "weight": jnp.sum(weights), "correct": jnp.sum(correct * weights)}


def _smoothing(label_smoothing: float, vocab: int) -> tuple[float, float, float]:
    """(confidence on the target, mass on each other class, the smoothed target's entropy)."""
    if label_smoothing <= 0.0:
        return 1.0, 0.0, 0.0
    confidence, low = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
    return confidence, low, -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _token_losses(label_smoothing: float, z_loss: float, logits: jax.Array, targets: jax.Array):
    """Per token: (training loss, NLL, correct) [B T], from logits [B T V] in two passes over V.

    A custom VJP, because autodiff of the textbook form costs the large-vocabulary step dearly:
    it keeps log-probabilities, builds the one-hot target by a scatter and computes argmax with a
    second variadic reduction. Here the forward pass reads the logits for max, Σexp and Σx (and
    gathers the target's logit); the backward pass is one elementwise expression,
    dL/dx_v = g·(p_v·(1 + 2·z·logZ) - low - (confidence - low)·[v = y]) + g_nll·(p_v - [v = y]).
    """
    return _token_losses_fwd(label_smoothing, z_loss, logits, targets)[0]


def _token_losses_fwd(label_smoothing, z_loss, logits, targets):
    x = logits.astype(jnp.float32)  # [B T V]
    vocab = x.shape[-1]
    confidence, low, constant = _smoothing(label_smoothing, vocab)
    top = jnp.max(x, axis=-1)  # [B T]
    log_z = top + jnp.log(jnp.sum(jnp.exp(x - top[..., None]), axis=-1))  # [B T]
    x_y = jnp.take_along_axis(x, targets[..., None], axis=-1)[..., 0]  # [B T]
    nll = log_z - x_y
    loss = nll
    if low > 0.0:
        smooth = vocab * log_z - jnp.sum(x, axis=-1)  # -Σ_v log p_v
        loss = confidence * nll + low * (smooth - nll) - constant
    if z_loss > 0.0:
        loss = loss + z_loss * jnp.square(log_z)
    correct = (x_y >= top).astype(jnp.float32)
    return (loss, nll, correct), (logits, targets, log_z)


def _token_losses_bwd(label_smoothing, z_loss, res, cotangents):
    logits, targets, log_z = res
    g_loss, g_nll, _ = cotangents  # [B T] each; `correct` has no gradient
    x = logits.astype(jnp.float32)
    confidence, low, _ = _smoothing(label_smoothing, x.shape[-1])
    p = jnp.exp(x - log_z[..., None])  # [B T V]
    is_target = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1) == targets[..., None]
    g, g_nll = g_loss[..., None], g_nll[..., None]
    d = g * (p * (1.0 + 2.0 * z_loss * log_z[..., None]) - low - jnp.where(is_target, confidence - low, 0.0))
    d = d + g_nll * (p - is_target)
    return d.astype(logits.dtype), None


_token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)
