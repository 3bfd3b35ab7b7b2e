"""MultiHeadAttention: projections around a pluggable attention spec, for self- and cross-attention.

With `decode=True` the module keeps a decode cache in the `cache` collection:
- self-attention stores each step's key and value; a spec with a `decode_window` (`Windowed`) keeps
  only the last `window + 1` positions in a ring buffer, any other spec keeps `cache_len` positions
  and reads the visible ones off the spec's own static pattern (`spec.mask`), so decoding matches
  the full pass; a `RecurrentDecoding` spec (`Performer`) keeps its own fixed-size running state;
- cross-attention projects the encoder output once, on the first step, and reuses it afterwards.
With grouped-query attention (`num_kv_heads` < `num_heads`, Ainslie et al. 2023) keys and values
have `num_kv_heads` heads, and so does the cache; each is shared by num_heads / num_kv_heads
query heads. A step past a full (non-windowed) cache returns NaN, never a clamped slot.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.attention import SPECS, weights
from transformer_jax.attention.base import RecurrentDecoding
from transformer_jax.attention.dense import Dense, masked_softmax_attention
from transformer_jax.layers import apply_rotary, dense

Dtype = Any
# The running-state entries of the registered recurrent specs (all batched), with their fresh values.
_RECURRENT = {name: value for cls in SPECS for name, value in getattr(cls, "decode_fresh", {}).items()}
# Cache entries with a leading batch axis; beam search reorders these and nothing else.
BATCHED_CACHE = ("cached_key", "cached_value", "cross_key", "cross_value") + tuple(_RECURRENT)
# The value of each self-attention cache entry before the first step (`decode.init_cache`).
FRESH_CACHE = {"cached_key": 0, "cached_value": 0, "cached_pos": -1, "cache_index": 0, **_RECURRENT}


class MultiHeadAttention(nn.Module):
    """Projections around an attention spec: x [B, T, D] -> [B, T, D].

    Usable alone: `MultiHeadAttention(num_heads=8, head_dim=64)(x)` is bidirectional dense
    self-attention with no padding.
    """

    num_heads: int
    head_dim: int
    spec: Any = Dense()
    causal: bool = False
    cross: bool = False  # cross-attention: kv comes from the encoder (may be None after the first decode step)
    rotary_base: float | None = None  # rotary positions on q and k when set (self-attention only)
    cache_len: int = 0  # positions a decode cache can hold
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    num_kv_heads: int | None = None  # grouped-query attention; default num_heads
    use_bias: bool = True
    scale: float | None = None  # scores = scale * q.k; default 1 / sqrt(head_dim)

    def _proj(self, name: str, heads: int):
        return dense((heads, self.head_dim), ("embed", "heads", "kv"), self.dtype, self.param_dtype, name,
                     self.use_bias)

    @nn.compact
    def __call__(self, x: Array, kv: Array | None = None, *, q_segment_ids=None, kv_segment_ids=None,
                 q_positions=None, kv_positions=None, bias: Array | None = None,
                 decode: bool = False) -> Array:
        """x [B, T, D] attends to itself, or (cross) to kv [B, S, D] -> [B, T, D].

        `bias` [B or 1, N, T, S] is added to the scores (T5's relative positions; Dense specs and
        cached decoding only). While decoding, its last axis spans the cache.
        """
        is_self = not self.cross
        kv_heads = self.num_kv_heads or self.num_heads
        q = self._proj("query", self.num_heads)(x)  # [B T N H]
        if self.scale is not None:  # the specs divide by sqrt(H); fold the requested scale into q
            q = q * jnp.asarray(self.scale * np.sqrt(self.head_dim), q.dtype)
        if is_self or not decode:
            src = x if is_self else kv
            k, v = self._proj("key", kv_heads)(src), self._proj("value", kv_heads)(src)  # [B S K H]
        else:  # cross-attention while decoding: project the encoder output once
            key_proj, value_proj = self._proj("key", kv_heads), self._proj("value", kv_heads)
            k = self.variable("cache", "cross_key", lambda: key_proj(kv)).value
            v = self.variable("cache", "cross_value", lambda: value_proj(kv)).value
        if self.rotary_base is not None and is_self:
            if q_positions is None:
                q_positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
            q = apply_rotary(q, q_positions, self.rotary_base)
            k = apply_rotary(k, q_positions if kv_positions is None else kv_positions, self.rotary_base)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))

        if decode and is_self and isinstance(self.spec, RecurrentDecoding):
            if bias is not None:
                raise ValueError(f"MultiHeadAttention: {self.spec!r} decodes from a running state and "
                                 "cannot add a score bias")
            out = self._recurrent_step(q, k, v)
        elif decode and is_self:
            out = self._cached_step(q, k, v, bias)
        else:
            k, v = self._repeat_kv(k), self._repeat_kv(v)  # [B S N H]
            if decode:
                mask = None if kv_segment_ids is None else (kv_segment_ids != 0)[:, None, None, :]
                out = masked_softmax_attention(q, k, v, mask, bias)
            else:
                extra = {} if bias is None else {"bias": bias}
                if weights.requested(self):  # only tj.attention_weights() asks
                    self.sow(weights.COLLECTION, "weights", weights.probabilities(
                        self.spec, q, k, causal=self.causal, q_segment_ids=q_segment_ids,
                        kv_segment_ids=kv_segment_ids, bias=bias))  # [B N T S]
                out = self.spec(q, k, v, causal=self.causal, q_segment_ids=q_segment_ids,
                                kv_segment_ids=kv_segment_ids, **extra)  # [B T N H]
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        return dense(x.shape[-1], ("heads", "kv", "embed"), self.dtype, self.param_dtype, "out",
                     self.use_bias, in_dims=2)(out)  # [B T D]

    def _repeat_kv(self, x: Array) -> Array:
        """[B, S, K, H] -> [B, S, N, H]: each key/value head serves N / K query heads."""
        group = self.num_heads // x.shape[2]
        x = x if group == 1 else jnp.repeat(x, group, axis=2)
        return nn.with_logical_constraint(x, ("batch", "length", "heads", "kv"))

    def _recurrent_step(self, q: Array, k: Array, v: Array) -> Array:
        """One decoding step from the spec's running state: q [B, 1, N, H], k, v [B, 1, K, H] -> [B, 1, N, H]."""
        if q.shape[1] != 1:
            raise ValueError(f"decode=True takes one position at a time; got length {q.shape[1]}")
        init = self.spec.decode_state(q.shape[0], self.num_heads, self.head_dim)
        state = {name: self.variable("cache", name, lambda a=a: a) for name, a in init.items()}
        out, new = self.spec.decode_step({name: var.value for name, var in state.items()}, q,
                                         self._repeat_kv(k), self._repeat_kv(v))
        for name, var in state.items():
            var.value = new[name]
        return out

    def _cached_step(self, q: Array, k: Array, v: Array, bias: Array | None) -> Array:
        """One decoding step: q [B, 1, N, H], k, v [B, 1, K, H] at the next position -> [B, 1, N, H]."""
        if q.shape[1] != 1:
            raise ValueError(f"decode=True takes one position at a time; got length {q.shape[1]}")
        window = self.spec.decode_window
        length = self.cache_len if window is None else min(window + 1, self.cache_len)
        if length <= 0:
            raise ValueError("MultiHeadAttention.cache_len must be positive to decode")
        b = q.shape[0]
        ck = self.variable("cache", "cached_key", jnp.zeros, (b, length) + k.shape[2:], k.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, (b, length) + v.shape[2:], v.dtype)
        cpos = self.variable("cache", "cached_pos", lambda: jnp.full((length,), -1, jnp.int32))
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        i = index.value
        slot = i % length if window is not None else i
        ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, slot, 0, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, slot, 0, 0))
        cpos.value = cpos.value.at[slot].set(i)
        index.value = i + 1
        if window is not None:  # ring buffer of the last window + 1 positions
            visible = (cpos.value >= 0) & (cpos.value <= i) & (i - cpos.value <= window)
        else:  # the row of the spec's own causal pattern
            pattern = jnp.asarray(self.spec.mask(length, length, True))  # [L L] static
            visible = pattern[i] & (cpos.value >= 0)
        out = masked_softmax_attention(q, self._repeat_kv(ck.value), self._repeat_kv(cv.value),
                                       visible[None, None, None, :], bias)
        if window is None:  # past a full cache there is no slot left: poison the step, don't clamp
            out = jnp.where(i < length, out, jnp.nan)
        return out


def keys_per_query(spec, n: int, causal: bool) -> float:
    """Average number of keys a query pays for under `spec` at length n (`spec.keys_per_query`)."""
    return spec.keys_per_query(n, causal)
