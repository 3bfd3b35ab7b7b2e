"""The attention contract shared by every pattern.

Every pattern is a frozen dataclass (its settings are its fields) callable as

    spec(q, k, v, *, causal=False, q_segment_ids=None, kv_segment_ids=None) -> [B, T, N, H]

on q [B, T, N, H] and k, v [B, S, N, H] (the layout of `jax.nn.dot_product_attention`),
and exposing its exact static pattern as `spec.mask(q_len, kv_len, causal=False)` -> bool
[q_len, kv_len]. Segment ids ([B, T] / [B, S] int, 0 = padding) carry padding and packing.
Scores, softmax and the log-sum-exp are computed in float32 whatever the input dtype; a query
row that sees no key returns zeros.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array, lax


def check_qkv(q: Array, k: Array, v: Array, q_segment_ids=None, kv_segment_ids=None) -> None:
    """Raise a ValueError naming the mismatch, before anything is traced further."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects q, k, v of rank 4 [B, T, N, H]; got q{q.shape}, k{k.shape}, v{v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, S, N, H]; got k{k.shape}, v{v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"q [B, T, N, H] and k [B, S, N, H] must agree on B, N and H; got q{q.shape}, k{k.shape}")
    if q_segment_ids is not None and q_segment_ids.shape != q.shape[:2]:
        raise ValueError(f"q_segment_ids must have shape [B, T] = {q.shape[:2]}; got {q_segment_ids.shape}")
    if kv_segment_ids is not None and kv_segment_ids.shape != k.shape[:2]:
        raise ValueError(f"kv_segment_ids must have shape [B, S] = {k.shape[:2]}; got {kv_segment_ids.shape}")


def einsum_f32(eq: str, a: Array, b: Array) -> Array:
    """`jnp.einsum(eq, a, b)` accumulated and returned in float32, on every backend.

    On GPU and TPU a bfloat16 x bfloat16 -> float32 dot is the fast path, so low-precision tiles go
    in as they are (`preferred_element_type`). XLA:CPU (jaxlib 0.10) accepts such a dot only in the
    layouts its dot library (YNNPACK) takes: it keeps it in bfloat16 during float normalisation, a
    later pass folds a transpose into the dot's dimension numbers (here `p` in "bqnts,bnsh->bqnth",
    whose batch axes b, n are not leading), the library then refuses it and the fallback DotThunk
    fails with "Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32". So on CPU the
    tiles are upcast first and the dot is float32 x float32. The choice is `lax.platform_dependent`,
    made when lowering for the platform that runs the code (not `jax.default_backend()` at trace
    time), so a GPU host jitting onto a CPU device, or an exported function, also gets it right.
    float32 inputs take neither branch and trace exactly as a plain einsum.
    """
    if a.dtype == jnp.float32 and b.dtype == jnp.float32:
        return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)
    return lax.platform_dependent(
        a, b,
        cpu=lambda a, b: jnp.einsum(eq, a.astype(jnp.float32), b.astype(jnp.float32),
                                    preferred_element_type=jnp.float32),
        default=lambda a, b: jnp.einsum(eq, a, b, preferred_element_type=jnp.float32))
