"""Dense attention: the plain XLA computation, the reference every other pattern is tested against."""

from __future__ import annotations

import dataclasses
import warnings
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


def _fallback(reason: str) -> None:
    warnings.warn(f"Dense attention: cuDNN's fused kernel cannot run here ({reason}); using the XLA "
                  "path. Use Dense(backend='xla') to choose it explicitly.", UserWarning, stacklevel=3)


def _cudnn(q: Array, k: Array, v: Array, *, causal: bool, seg: Array | None, bias: Array | None) -> Array:
    """cuDNN's fused attention: causality as cuDNN's own mask type, segments as an explicit mask
    [B, 1, T, S]; rows that see no key are zeroed (cuDNN would average them)."""
    mask = None if seg is None else seg[:, None]
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal, implementation="cudnn")
    if seg is None:
        return out
    seen = jnp.any(seg, axis=-1)[..., None, None]  # [B, T, 1, 1]
    return jnp.where(seen, out, jnp.zeros((), out.dtype))


def _causal(q_len: int, kv_len: int) -> Array:
    """[T, S] causal pattern built in the graph from iotas (a numpy constant this size would be
    embedded in the program and constant-folded by XLA at long lengths)."""
    return jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]


@dataclasses.dataclass(frozen=True)
class Dense:
    """Full n x n attention.

    `backend`: "auto" (default) runs cuDNN's fused kernel (through `jax.nn.dot_product_attention`)
    on a GPU and XLA elsewhere; "cudnn" asks for cuDNN everywhere; "xla" never uses it. When cuDNN
    is asked for (auto on a GPU, or "cudnn") but cannot run (no GPU, float32 inputs, a bias shape
    it rejects, ...), the XLA path runs instead and a `UserWarning` says why; never silently.
    """

    backend: Literal["auto", "xla", "cudnn"] = "auto"
    decode_window: ClassVar[None] = None
    exact_softmax: ClassVar[bool] = True
    takes_bias: ClassVar[bool] = True
    length_invariant: ClassVar[bool] = True

    def __post_init__(self):
        if self.backend not in ("auto", "xla", "cudnn"):
            raise ValueError(f"Dense.backend must be 'auto', 'xla' or 'cudnn'; got {self.backend!r}")

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
        on_gpu = jax.default_backend() == "gpu"
        if self.backend == "cudnn" or (self.backend == "auto" and on_gpu):
            if not on_gpu:
                _fallback(f"no GPU (backend {jax.default_backend()!r})")
            else:
                try:
                    return _cudnn(q, k, v, causal=causal, seg=seg, bias=bias)
                except (NotImplementedError, ValueError, RuntimeError, TypeError) as e:
                    _fallback(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return masked_softmax_attention(q, k, v, mask, bias)
