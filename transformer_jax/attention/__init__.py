"""Attention patterns behind one contract (see `transformer_jax.attention.base`)."""

from transformer_jax.attention.dense import Dense, masked_softmax_attention

__all__ = ["Dense", "masked_softmax_attention"]
