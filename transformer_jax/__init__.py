"""transformer_jax: Flax (linen) Transformers with attention that scales.

The public API lives here; everything else is an implementation detail that may move.
"""

from transformer_jax import attention
from transformer_jax.config import TransformerConfig, base, big, preset, tiny
from transformer_jax.decode import generate, sequence_logprob
from transformer_jax.model import (DecoderLM, Encoder, EncoderClassifier, Decoder, MaskedLM, Transformer,
                                   flops_per_token, param_count)

__all__ = [
    "attention", "TransformerConfig", "base", "big", "preset", "tiny",
    "Transformer", "Encoder", "Decoder", "EncoderClassifier", "MaskedLM", "DecoderLM",
    "flops_per_token", "param_count", "generate", "sequence_logprob",
]
