"""Label-smoothed cross-entropy with optional z-loss, as sums (normalised by the caller).

Losses are returned as *sums* over tokens together with the token count, so that gradient
accumulation over micro-batches and data parallelism both normalise once, over all non-pad
tokens of the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                       label_smoothing: float = 0.0, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Sums of the training loss, the plain NLL, the token count and the correct predictions.

    logits [B T V] (or [B V] for classification), targets [B T] int (or [B]), weights like targets.

    Label smoothing (Szegedy et al. 2016; Vaswani et al. 2017 §5.4 with ε=0.1): the target puts
    1-ε on the true class and ε/(V-1) on each other class. The constant entropy of that target is
    subtracted, so a perfect model has loss 0 (as in flax/examples/wmt).
    z-loss (PaLM, Chowdhery et al. 2022): z_loss · log²Z keeps the softmax normaliser near 1.
    """
    logits = logits.astype(jnp.float32)  # [B T V]
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [B T]
    log_p = logits - log_z[..., None]  # [B T V]
    nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]  # [B T]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        constant = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        smooth = -jnp.sum(log_p, axis=-1)  # [B T] = -Σ_v log p_v
        loss = confidence * nll + low * (smooth - nll) - constant
    else:
        loss = nll
    if z_loss > 0.0:
        loss = loss + z_loss * jnp.square(log_z)
    weights = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"loss": jnp.sum(loss * weights), "nll": jnp.sum(nll * weights),
            "weight": jnp.sum(weights), "correct": jnp.sum(correct * weights)}
