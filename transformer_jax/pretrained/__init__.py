"""Pretrained checkpoints in the Hugging Face layout: BERT, GPT-2, T5, BART, Marian, Llama, Mistral.

    model, variables = tj.from_pretrained("path/to/dir")
    tj.save_pretrained(model, variables, "path/to/out")
"""

from transformer_jax.pretrained.convert import from_pretrained, load_generation_config, save_pretrained
from transformer_jax.pretrained.families import ARCHITECTURES, FAMILIES
from transformer_jax.pretrained.tokenizer import load_tokenizer

SUPPORTED = tuple(sorted(ARCHITECTURES))

__all__ = ["ARCHITECTURES", "FAMILIES", "SUPPORTED", "from_pretrained", "load_generation_config",
           "load_tokenizer", "save_pretrained"]
