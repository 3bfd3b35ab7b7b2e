"""A synthetic in-memory task with an exactly restorable iterator (tests, smoke runs, benchmarks).

Task: reverse a random token sequence (a translation-shaped batch). Batch `i` of the *global*
stream is a pure function of (seed, i), and process p of P yields rows [p·B/P, (p+1)·B/P) of it, so
the global batch is the same for any number of processes, and the state is just `{"position": i}`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transformer_jax.config import BOS_ID, EOS_ID

FIRST_TOKEN = 4  # after pad, EOS, BOS, UNK


class SyntheticIterator:
    """Translation-shaped batches: src = tokens + EOS, tgt_in = BOS + reversed, tgt_out = reversed + EOS."""

    def __init__(self, *, global_batch_size: int, max_len: int, vocab_size: int, seed: int = 0,
                 shard_index: int = 0, shard_count: int = 1):
        if global_batch_size % shard_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by shard_count={shard_count}")
        if vocab_size <= FIRST_TOKEN + 1 or max_len < 3:
            raise ValueError(f"synthetic task needs vocab_size > {FIRST_TOKEN + 1} and max_len >= 3; "
                             f"got {vocab_size}, {max_len}")
        self.global_batch_size, self.max_len, self.vocab_size = global_batch_size, max_len, vocab_size
        self.seed, self.shard_index, self.shard_count = seed, shard_index, shard_count
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.position])
        self.position += 1
        b, n = self.global_batch_size, self.max_len
        lengths = rng.integers(1, n, size=b)  # content tokens, leaving room for EOS
        tokens = rng.integers(FIRST_TOKEN, self.vocab_size, size=(b, n - 1))
        mask = np.arange(n - 1)[None, :] < lengths[:, None]
        src = np.zeros((b, n), np.int32)
        tgt_in = np.zeros((b, n), np.int32)
        tgt_out = np.zeros((b, n), np.int32)
        for r in range(b):
            content = tokens[r][mask[r]]
            src[r, : len(content) + 1] = [*content, EOS_ID]
            tgt_in[r, : len(content) + 1] = [BOS_ID, *content[::-1]]
            tgt_out[r, : len(content) + 1] = [*content[::-1], EOS_ID]
        rows = slice(self.shard_index * b // self.shard_count, (self.shard_index + 1) * b // self.shard_count)
        return {"src": src[rows], "tgt_in": tgt_in[rows], "tgt_out": tgt_out[rows]}

    def get_state(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"synthetic iterator state has seed={state.get('seed')}, this iterator {self.seed}")
        self.position = int(state["position"])
