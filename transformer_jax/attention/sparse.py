"""BigBird-style block-sparse attention (Zaheer et al. 2020, "ITC": internal global tokens)."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.attention.base import check_qkv, mask_keys_per_query
from transformer_jax.attention.blockwise import blockwise_attention, cdiv
from transformer_jax.attention.flash import Flash
from transformer_jax.attention.windowed import _check_self


@functools.lru_cache(maxsize=64)
def _block_table(n_blocks: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int,
                 causal: bool) -> np.ndarray:
    """[n_blocks - g, m] key blocks read by each non-global query block g, g+1, ...; -1 = none.

    Columns: the window (left = window_blocks // 2 blocks before, the rest after, the block itself
    first), then the global blocks not already in the window, then random blocks drawn without
    replacement from the blocks not yet read (from the past and the block itself when causal).
    Row by row from one `np.random.default_rng(seed)`, so a (seed, length) pair is reproducible.
    """
    g = min(global_blocks, n_blocks)
    left = window_blocks // 2
    offsets = np.arange(-left, window_blocks - left)  # e.g. 3 -> -1, 0, 1
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(g, n_blocks):
        win = [i + o if 0 <= i + o < n_blocks and not (causal and o > 0) else -1 for o in offsets]
        glob = [j if j not in win else -1 for j in range(g)]
        seen = set(win) | set(glob)
        pool = [j for j in range(i + 1 if causal else n_blocks) if j not in seen]
        pick = sorted(rng.choice(pool, size=min(random_blocks, len(pool)), replace=False).tolist()) if pool else []
        rows.append(win + glob + pick + [-1] * (random_blocks - len(pick)))
    table = np.asarray(rows, np.int32).reshape(n_blocks - g, window_blocks + g + random_blocks)
    table.flags.writeable = False
    return table


@dataclasses.dataclass(frozen=True)
class BlockSparse:
    """BigBird block-sparse attention: each query block reads `window_blocks` blocks centred on itself,
    the first `global_blocks` blocks and `random_blocks` random blocks (numpy, from `seed`); the global
    query blocks read everything (computed with `Flash`, O(n * global_blocks * block_size)).

    Short sequences: with fewer blocks than the settings ask for, the global and random counts are
    clipped to the blocks that exist, so lengths 1 and 2 work (they become dense). With causal=True
    the pattern keeps its causal part (random blocks come from the past) and masks j > i elementwise.
    """

    block_size: int = 64
    window_blocks: int = 3
    global_blocks: int = 2
    random_blocks: int = 3
    seed: int = 0
    decode_window: ClassVar[None] = None
    exact_softmax: ClassVar[bool] = False
    takes_bias: ClassVar[bool] = False
    length_invariant: ClassVar[bool] = False

    def __post_init__(self):
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"BlockSparse.block_size must be a positive int; got {self.block_size!r}")
        for name in ("window_blocks", "global_blocks", "random_blocks"):
            val = getattr(self, name)
            if not isinstance(val, int) or val < 0:
                raise ValueError(f"BlockSparse.{name} must be an int >= 0; got {val!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"BlockSparse.seed must be an int; got {self.seed!r}")

    def block_table(self, n_blocks: int, causal: bool = False) -> np.ndarray:
        """Key blocks per non-global query block (rows global_blocks.., -1 = none); see `_block_table`."""
        return _block_table(n_blocks, self.window_blocks, self.global_blocks, self.random_blocks, self.seed, causal)

    def mask(self, q_len: int, kv_len: int, causal: bool = False) -> np.ndarray:
        _check_self("BlockSparse", q_len, kv_len)
        b, nb = self.block_size, cdiv(q_len, self.block_size)
        g = min(self.global_blocks, nb)
        blocks = np.zeros((nb, nb), bool)  # [query block, key block]
        blocks[:g] = True
        table = self.block_table(nb, causal)
        rows = np.repeat(np.arange(g, nb), table.shape[1])
        cols = table.reshape(-1)
        blocks[rows[cols >= 0], cols[cols >= 0]] = True
        out = np.repeat(np.repeat(blocks, b, 0), b, 1)[:q_len, :kv_len]
        return out & np.tril(np.ones_like(out)) if causal else out

    def keys_per_query(self, n: int, causal: bool) -> float:
        return mask_keys_per_query(self, n, causal)

    def __call__(self, q: Array, k: Array, v: Array, *, causal: bool = False,
                 q_segment_ids: Array | None = None, kv_segment_ids: Array | None = None) -> Array:
        check_qkv(q, k, v, q_segment_ids, kv_segment_ids)
        n = q.shape[1]
        _check_self("BlockSparse", n, k.shape[1])
        b, nb = self.block_size, cdiv(n, self.block_size)
        split = min(self.global_blocks, nb) * b  # global query rows [0, split) read every key
        qseg = (lambda sl: None) if q_segment_ids is None else (lambda sl: q_segment_ids[:, sl])
        parts = []
        if split > 0:
            parts.append(Flash()(q[:, :split], k, v, causal=causal, q_segment_ids=qseg(slice(None, split)),
                                 kv_segment_ids=kv_segment_ids))
        if split < n:
            parts.append(blockwise_attention(
                q[:, split:], k, v, self.block_table(nb, causal), block_q=b, block_k=b, q_offset=split,
                causal=causal, q_segment_ids=qseg(slice(split, None)), kv_segment_ids=kv_segment_ids))
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
