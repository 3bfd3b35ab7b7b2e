"""transformer_jax: Flax (linen) Transformers with attention that scales.

The public API lives here; everything else is an implementation detail that may move.
"""

from transformer_jax import attention, nnx
from transformer_jax.config import TransformerConfig, base, big, preset, tiny
from transformer_jax.attention.module import MultiHeadAttention
from transformer_jax.attention.weights import attention_weights
from transformer_jax.moe import MoEMLP
from transformer_jax.compilation_cache import enable_compilation_cache
from transformer_jax.decode import GenerateOutput, GenerationConfig, generate, init_cache, sequence_logprob
from transformer_jax.model import (Decoder, DecoderBlock, DecoderLM, Encoder, EncoderBlock, EncoderClassifier,
                                   MaskedLM, QuestionAnswering, TokenClassifier, Transformer, flops_per_token,
                                   param_count)
from transformer_jax.lora import LoraConfig, init_lora, merge_lora
from transformer_jax.nnx import to_nnx
from transformer_jax.pretrained import (LoadReport, from_pretrained, load_generation_config, load_tokenizer,
                                        save_pretrained)
from transformer_jax.quantization import QuantizedVariables, dequantize, quantize
from transformer_jax.vit import ViT, ViTConfig, ViTEncoder
from transformer_jax.scan import hidden_states, stack_layers, unstack_layers

__all__ = [
    "attention", "TransformerConfig", "base", "big", "preset", "tiny",
    "Transformer", "Encoder", "Decoder", "EncoderClassifier", "TokenClassifier", "QuestionAnswering",
    "MaskedLM", "DecoderLM",
    "MultiHeadAttention", "attention_weights", "EncoderBlock", "DecoderBlock", "MoEMLP",
    "flops_per_token", "param_count", "generate", "sequence_logprob", "GenerationConfig", "GenerateOutput",
    "init_cache", "enable_compilation_cache",
    "from_pretrained", "save_pretrained", "LoadReport", "load_tokenizer", "load_generation_config", "nnx", "to_nnx",
    "LoraConfig", "init_lora", "merge_lora", "quantize", "dequantize", "QuantizedVariables",
    "ViT", "ViTConfig", "ViTEncoder",
    "stack_layers", "unstack_layers", "hidden_states",
]
