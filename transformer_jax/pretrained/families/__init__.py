"""The registry of pretrained families: one file per family, one line here per family.

    family("bert")                    # the Family named "bert"
    ARCHITECTURES["BertForMaskedLM"]  # the Family of a Hugging Face architecture name

Adding a family: write `families/<name>.py` with its `Family` (config mapping both ways, tensor
table per architecture, head of each architecture name; see base.py) and add it to `_REGISTERED`.
"""

from __future__ import annotations

from transformer_jax.pretrained.families import albert, bart, bert, distilbert, gemma3, gpt2, llama, qwen3, roberta, t5, vit
from transformer_jax.pretrained.families.base import ENCODER_HEADS, HEADS, Family

_REGISTERED = (
    bert.FAMILY,
    gpt2.FAMILY,
    t5.FAMILY,
    bart.BART,
    bart.MARIAN,
    llama.LLAMA,
    llama.MISTRAL,
    roberta.ROBERTA,
    roberta.XLM_ROBERTA,
    distilbert.FAMILY,
    albert.FAMILY,
    qwen3.FAMILY,
    gemma3.FAMILY,
    vit.FAMILY,
)

FAMILIES: dict[str, Family] = {f.name: f for f in _REGISTERED}
ARCHITECTURES: dict[str, Family] = {arch: f for f in _REGISTERED for arch in f.architectures}


def family(name: str) -> Family:
    """The registered family called `name`; raises naming the valid ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown pretrained family {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]


__all__ = ["ARCHITECTURES", "ENCODER_HEADS", "FAMILIES", "HEADS", "Family", "family"]
