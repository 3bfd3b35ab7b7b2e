"""Attention patterns behind one contract (see `transformer_jax.attention.base`).

`Dense` is the reference; `Flash` computes the same thing blockwise in O(n) memory; `Windowed`
and `BlockSparse` restrict the pattern and run in O(n) time; `Performer` approximates softmax
attention with random features in O(n). All share the call signature, expose their static pattern
as `spec.mask(q_len, kv_len, causal)` and carry their own facts (`AttentionSpec`).

`SPECS` is the one registry: the spec classes a config string or the command line can name. A new
spec is a file here plus one line in `SPECS` (any object satisfying `AttentionSpec` is accepted by
`TransformerConfig`, registered or not).
"""

from transformer_jax.attention.base import AttentionSpec, RecurrentDecoding
from transformer_jax.attention.dense import Dense, masked_softmax_attention
from transformer_jax.attention.flash import Flash
from transformer_jax.attention.performer import Performer
from transformer_jax.attention.sparse import BlockSparse
from transformer_jax.attention.windowed import Windowed

SPECS: tuple[type, ...] = (Dense, Flash, Windowed, BlockSparse, Performer)

__all__ = ["SPECS", "AttentionSpec", "BlockSparse", "Dense", "Flash", "Performer", "RecurrentDecoding", "Windowed",
           "masked_softmax_attention"]
