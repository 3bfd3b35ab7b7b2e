"""Pure mask builders shared by every attention pattern.

Conventions (one alphabet everywhere): B batch, T query length, S key length,
N heads, H head dim. A mask is boolean, True where attention is allowed.

Padding and packing are one mechanism: segment ids. Tokens of the same example
share a positive segment id; padding has segment id 0 and is never attended to.
An unpacked batch uses `segment_ids = (tokens != 0)`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array


def segment_ids_from_tokens(tokens: Array, pad_id: int = 0) -> Array:
    """[B, T] int tokens -> [B, T] int32 segment ids (0 where the token is `pad_id`)."""
    return (tokens != pad_id).astype(jnp.int32)


def segment_mask(q_segment_ids: Array, kv_segment_ids: Array) -> Array:
    """[B, T], [B, S] -> [B, T, S]: same segment and the key is not padding."""
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    return same & (kv_segment_ids[:, None, :] != 0)


def causal_mask(q_len: int, kv_len: int) -> np.ndarray:
    """[T, S] static: query i sees key j iff j <= i."""
    return np.tril(np.ones((q_len, kv_len), dtype=bool))


def window_mask(q_len: int, kv_len: int, window: int, causal: bool) -> np.ndarray:
    """[T, S] static sliding window: |i - j| <= window, or 0 <= i - j <= window if causal."""
    d = np.arange(q_len)[:, None] - np.arange(kv_len)[None, :]
    return (d >= 0) & (d <= window) if causal else np.abs(d) <= window


def combine(pattern: np.ndarray | Array | None, seg: Array | None) -> Array | None:
    """Combine a static [T, S] pattern with a [B, T, S] segment mask -> [B, 1, T, S]."""
    if pattern is None and seg is None:
        return None
    if seg is None:
        return jnp.asarray(pattern)[None, None]
    if pattern is None:
        return seg[:, None]
    return seg[:, None] & jnp.asarray(pattern)[None, None]
