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

from jax import Array


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
