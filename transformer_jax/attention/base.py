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

from typing import Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np
from jax import Array, lax


@runtime_checkable
class AttentionSpec(Protocol):
    """What the rest of the library asks of a spec; each spec states its own facts, so a new pattern
    touches its own file (plus the export in `transformer_jax.attention`), never an isinstance ladder.

    - `__call__` and `mask`: the contract above.
    - `keys_per_query(n, causal)`: the average number of keys a query pays for at length n, for FLOP
      counts (`model.flops_per_token`); 4 * H FLOPs per key (score and value products). A kernelised
      spec gives the equivalent count of its feature-space products.
    - `decode_window`: a key-value decode cache needs only the last `decode_window + 1` positions
      (a ring buffer), or None for a cache of every position.
    - `exact_softmax`: computes softmax attention over every key it is given (`Dense`, `Flash`).
      Cross-attention needs it: cached decoding computes cross-attention as dense softmax, so a spec
      without it would train one function and decode another.
    - `takes_bias`: accepts an additive score `bias=` [B or 1, N, T, S] (T5's relative positions).
    - `length_invariant`: outputs at real positions do not change when trailing padding is added or
      removed, so evaluation may trim padding (`data.pipeline.length_sorted`). Not `BlockSparse`:
      its random and global blocks are placed by the padded length.
    """

    decode_window: int | None
    exact_softmax: bool
    takes_bias: bool
    length_invariant: bool

    def __call__(self, q: Array, k: Array, v: Array, *, causal: bool = False,
                 q_segment_ids: Array | None = None, kv_segment_ids: Array | None = None) -> Array: ...

    def mask(self, q_len: int, kv_len: int, causal: bool = False) -> np.ndarray: ...

    def keys_per_query(self, n: int, causal: bool) -> float: ...


@runtime_checkable
class RecurrentDecoding(Protocol):
    """A spec that decodes from a fixed-size running state instead of a key-value cache (Performer).

    `decode_fresh` (a class attribute) names the state entries and the value each holds before the
    first step (`decode.init_cache` rebuilds a fresh cache from it; every entry has a leading batch
    axis, which beam search reorders); `decode_state(batch, heads, head_dim)` -> {name: initial
    array}; `decode_step(state, q, k, v)` takes q, k, v [B, 1, N, H] at the next position and
    returns (out [B, 1, N, H], new state).
    """

    decode_fresh: dict[str, float]

    def decode_state(self, batch: int, heads: int, head_dim: int) -> dict[str, Array]: ...

    def decode_step(self, state: dict[str, Array], q: Array, k: Array, v: Array
                    ) -> tuple[Array, dict[str, Array]]: ...


def full_keys_per_query(n: int, causal: bool) -> float:
    """Keys per query of full attention: n, or (n + 1) / 2 averaged over causal rows."""
    return (n + 1) / 2 if causal else float(n)


def mask_keys_per_query(spec, n: int, causal: bool) -> float:
    """Keys per query counted off the spec's own static pattern (sampled at most 8192 long: a
    block pattern's per-query count is set by its blocks, not by n)."""
    sample = min(n, 8192)
    return float(spec.mask(sample, sample, causal).sum()) / sample


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
