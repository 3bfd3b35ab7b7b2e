"""Pretrained checkpoints in the Hugging Face layout, under any head of their family.

    model, variables = tj.from_pretrained("path/to/dir", head="sequence_classification", num_labels=3)
    tj.save_pretrained(model, variables, "path/to/out", tokenizer=tok)

Families (one file each in `families/`, registered by name): BERT, RoBERTa, XLM-R, DistilBERT, ALBERT,
GPT-2, Llama, Mistral, Qwen3, Gemma 3, T5, BART, Marian, ViT.
"""

from transformer_jax.pretrained.convert import from_pretrained, load_generation_config, save_pretrained
from transformer_jax.pretrained.families import ARCHITECTURES, FAMILIES, HEADS, family
from transformer_jax.pretrained.match import LoadReport
from transformer_jax.pretrained.tokenizer import load_tokenizer

SUPPORTED = tuple(sorted(ARCHITECTURES))

__all__ = ["ARCHITECTURES", "FAMILIES", "HEADS", "LoadReport", "SUPPORTED", "family", "from_pretrained",
           "load_generation_config", "load_tokenizer", "save_pretrained"]
