"""Attention patterns behind one contract (see `transformer_jax.attention.base`).

`Dense` is the reference; `Flash` computes the same thing blockwise in O(n) memory; `Windowed`
and `BlockSparse` restrict the pattern and run in O(n) time. All four share the call signature
and expose their static pattern as `spec.mask(q_len, kv_len, causal)`.
"""

from transformer_jax.attention.dense import Dense, masked_softmax_attention
from transformer_jax.attention.flash import Flash
from transformer_jax.attention.sparse import BlockSparse
from transformer_jax.attention.windowed import Windowed

AttentionSpec = Dense | Flash | Windowed | BlockSparse

__all__ = ["AttentionSpec", "BlockSparse", "Dense", "Flash", "Windowed", "masked_softmax_attention"]
