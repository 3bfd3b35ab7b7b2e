"""Memory-efficient dense attention: every key, never an n x n tensor (Rabe & Staats 2021; Dao 2022)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from jax import Array

from transformer_jax.attention import masks
from transformer_jax.attention.base import check_qkv, full_keys_per_query
from transformer_jax.attention.blockwise import blockwise_attention, cdiv


def _round_up(x: int, m: int) -> int:
    return cdiv(x, m) * m


@dataclasses.dataclass(frozen=True)
class Flash:
    """Dense attention computed blockwise: the same result as `Dense` in O(n * block_size) memory.

    Every query block reads every key block; forward and backward each hold one
    [B, T, N, block_size] score tile at a time. Works for self- and cross-attention (T != S).
    Causal attention masks the future elementwise but still computes those tiles (2x the useful work).
    """

    block_size: int = 512
    decode_window: ClassVar[None] = None
    exact_softmax: ClassVar[bool] = True
    takes_bias: ClassVar[bool] = False
    length_invariant: ClassVar[bool] = True

    def __post_init__(self):
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"Flash.block_size must be a positive int; got {self.block_size!r}")

    def mask(self, q_len: int, kv_len: int, causal: bool = False) -> np.ndarray:
        return masks.causal_mask(q_len, kv_len) if causal else np.ones((q_len, kv_len), bool)

    def keys_per_query(self, n: int, causal: bool) -> float:
        return full_keys_per_query(n, causal)

    def __call__(self, q: Array, k: Array, v: Array, *, causal: bool = False,
                 q_segment_ids: Array | None = None, kv_segment_ids: Array | None = None) -> Array:
        check_qkv(q, k, v, q_segment_ids, kv_segment_ids)
        T, S = q.shape[1], k.shape[1]
        bq = min(self.block_size, _round_up(T, 8))  # short sequences: one small block, not 512 rows of padding
        bk = min(self.block_size, _round_up(S, 8))
        table = np.broadcast_to(np.arange(cdiv(S, bk)), (cdiv(T, bq), cdiv(S, bk)))
        return blockwise_attention(q, k, v, table, block_q=bq, block_k=bk, causal=causal,
                                   q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
