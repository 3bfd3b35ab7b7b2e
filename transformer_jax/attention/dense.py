"""Dense attention: the plain XLA computation, the reference every other pattern is tested against."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.attention import masks
from transformer_jax.attention.base import check_qkv, einsum_f32, full_keys_per_query


def masked_softmax_attention(q: Array, k: Array, v: Array, mask: Array | None,
                             bias: Array | None = None) -> Array:
    """softmax(q k^T / sqrt(H) + bias) v with a boolean mask broadcastable to [B, N, T, S].

    `bias` (broadcastable to [B, N, T, S], e.g. T5's relative positions) is added to the scores.
    Scores and softmax in float32; rows with no visible key give zeros (not a uniform average).

    Written for speed as well as clarity (it is the `Dense` hot path): the scale goes onto q
    ([B, T, N, H], not the [B, N, T, S] scores), masked scores get the most negative finite float
    instead of -inf so `jax.nn.softmax` (whose custom JVP gives a two-op backward) needs no guard,
    and the rows that see nothing are zeroed on the [B, T, N, H] output, not on the scores.
    """
    q = q * jnp.asarray(1.0 / np.sqrt(q.shape[-1]), q.dtype)
    s = einsum_f32("btnh,bsnh->bnts", q, k)  # [B N T S]
    if bias is not None:
        s = s + bias.astype(jnp.float32)
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1)
    out = jnp.einsum("bnts,bsnh->btnh", p.astype(v.dtype), v)  # [B T N H]
    if mask is None:
        return out
    seen = jnp.any(mask, axis=-1)
    seen = seen.reshape((1,) * (3 - seen.ndim) + seen.shape)  # [B|1, N|1, T]
    return jnp.where(seen.transpose(0, 2, 1)[..., None], out, jnp.zeros((), out.dtype))


def _causal(q_len: int, kv_len: int) -> Array:
    """[T, S] causal pattern built in the graph from iotas (a numpy constant this size would be
    embedded in the program and constant-folded by XLA at long lengths)."""
    return jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]


@dataclasses.dataclass(frozen=True)
class Dense:
    """Full n x n attention. `backend="cudnn"` uses cuDNN's fused kernel on a GPU through
    `jax.nn.dot_product_attention`, and falls back to XLA elsewhere (or when it rejects the input)."""

    backend: Literal["xla", "cudnn"] = "xla"
    decode_window: ClassVar[None] = None
    exact_softmax: ClassVar[bool] = True
    takes_bias: ClassVar[bool] = True

    def __post_init__(self):
        if self.backend not in ("xla", "cudnn"):
            raise ValueError(f"Dense.backend must be 'xla' or 'cudnn'; got {self.backend!r}")

    def mask(self, q_len: int, kv_len: int, causal: bool = False) -> np.ndarray:
        return masks.causal_mask(q_len, kv_len) if causal else np.ones((q_len, kv_len), bool)

    def keys_per_query(self, n: int, causal: bool) -> float:
        return full_keys_per_query(n, causal)

    def __call__(self, q, k, v, *, causal=False, q_segment_ids=None, kv_segment_ids=None, bias=None):
        """As every spec, plus an optional additive score `bias` [B or 1, N, T, S] (Dense only)."""
        check_qkv(q, k, v, q_segment_ids, kv_segment_ids)
        seg = None
        if q_segment_ids is not None or kv_segment_ids is not None:
            qs = q_segment_ids if q_segment_ids is not None else jnp.ones(q.shape[:2], jnp.int32)
            ks = kv_segment_ids if kv_segment_ids is not None else jnp.ones(k.shape[:2], jnp.int32)
            seg = masks.segment_mask(qs, ks)
        pattern = _causal(q.shape[1], k.shape[1]) if causal else None
        mask = masks.combine(pattern, seg)
        if self.backend == "cudnn" and jax.default_backend() == "gpu":
            try:
                out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="cudnn")
                if mask is not None:  # cuDNN averages fully masked rows; the contract gives zeros
                    out = jnp.where(jnp.any(mask, axis=-1).transpose(0, 2, 1)[..., None], out, 0)
                return out
            except (NotImplementedError, ValueError, RuntimeError):
                pass
        return masked_softmax_attention(q, k, v, mask, bias)
