"""Sliding-window attention computed blockwise in O(n * window) time and memory (Beltagy et al. 2020)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from jax import Array

from transformer_jax.attention import masks
from transformer_jax.attention.base import check_qkv
from transformer_jax.attention.blockwise import blockwise_attention, cdiv


def _check_self(name: str, q_len: int, kv_len: int) -> None:
    if q_len != kv_len:
        raise ValueError(f"{name} is self-attention: needs query length == key length; got T={q_len}, S={kv_len}")


def window_block_size(window: int, length: int) -> int:
    """Block size for a window: about the window (so a query block reads 2-3 key blocks), a multiple
    of 8, at least 16 and at most 256 rows (larger windows read more, smaller-tiled blocks), and no
    larger than the sequence needs."""
    b = min(256, max(16, cdiv(window, 8) * 8))
    return min(b, cdiv(length, 8) * 8)


@dataclasses.dataclass(frozen=True)
class Windowed:
    """Query i sees key j iff |i - j| <= window, or 0 <= i - j <= window when causal.

    Blocks of b ~ window rows; query block i reads key blocks i - r .. i + r (i - r .. i if causal),
    r = ceil(window / b), as contiguous slices; the exact band is masked inside each tile.
    """

    window: int
    exact_softmax: ClassVar[bool] = False
    takes_bias: ClassVar[bool] = False
    length_invariant: ClassVar[bool] = True

    def __post_init__(self):
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"Windowed.window must be an int >= 0; got {self.window!r}")

    def mask(self, q_len: int, kv_len: int, causal: bool = False) -> np.ndarray:
        _check_self("Windowed", q_len, kv_len)
        return masks.window_mask(q_len, kv_len, self.window, causal)

    @property
    def decode_window(self) -> int:
        """Decoding needs only the last window + 1 keys: a ring buffer."""
        return self.window

    def keys_per_query(self, n: int, causal: bool) -> float:
        """Exact: min(i, w) keys behind query i, min(n - 1 - i, w) ahead unless causal, and itself."""
        d = np.arange(n)
        reach = np.minimum(d, self.window) + (0 if causal else np.minimum(n - 1 - d, self.window)) + 1
        return float(reach.mean())

    def block_table(self, n: int, causal: bool = False) -> tuple[int, np.ndarray]:
        """(block size b, [ceil(n / b), m] key blocks per query block, -1 = none) for length n."""
        b = window_block_size(self.window, n)
        nb, r = cdiv(n, b), cdiv(self.window, b)
        blocks = np.arange(nb)[:, None] + np.arange(-r, 1 if causal else r + 1)[None, :]  # [nb, m]
        return b, np.where((blocks >= 0) & (blocks < nb), blocks, -1)

    def __call__(self, q: Array, k: Array, v: Array, *, causal: bool = False,
                 q_segment_ids: Array | None = None, kv_segment_ids: Array | None = None) -> Array:
        check_qkv(q, k, v, q_segment_ids, kv_segment_ids)
        n = q.shape[1]
        _check_self("Windowed", n, k.shape[1])
        b, table = self.block_table(n, causal)
        return blockwise_attention(q, k, v, table, block_q=b, block_k=b, causal=causal, window=self.window,
                                   q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
