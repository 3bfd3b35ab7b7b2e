"""Text in, text out with a pretrained model: translate (encoder-decoder) or continue (decoder-only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transformer_jax.decode import GenerationConfig, generate
from transformer_jax.model import DecoderLM, Transformer


def _cut(ids: Sequence[int], config: GenerationConfig) -> list[int]:
    """Tokens up to (not including) the first EOS."""
    out = []
    for i in ids:
        if int(i) in config.eos_ids:
            break
        out.append(int(i))
    return out


def _pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    batch = np.full((len(rows), width), pad_id, np.int32)
    for b, r in enumerate(rows):
        batch[b, :len(r)] = r
    return batch, np.array([len(r) for r in rows], np.int32)


def generate_text(model, variables, tokenizer, texts: Sequence[str], *, generation_config: GenerationConfig,
                  max_new_tokens: int, beam_size: int = 1, batch_size: int = 8) -> list[str]:
    """One output string per input: a translation (`Transformer`) or a continuation (`DecoderLM`,
    the new text only). Beam search over decoder-only prompts runs one prompt at a time (it needs
    equal-length prompts)."""
    if not isinstance(model, (Transformer, DecoderLM)):
        raise TypeError(f"generate_text: {type(model).__name__} does not generate; use a Transformer or DecoderLM")
    encoded = [tokenizer.encode(t) for t in texts]
    if any(not ids for ids in encoded):
        raise ValueError("generate_text: an input line encodes to no tokens; give non-empty lines")
    decoder_only = isinstance(model, DecoderLM)
    step = 1 if decoder_only and beam_size > 1 else batch_size
    outputs = []
    for start in range(0, len(encoded), step):
        rows = encoded[start:start + step]
        pad = generation_config.pad_id if decoder_only else (model.cfg.pad_id or 0)
        batch, lengths = _pad(rows, pad)
        kw = {"prompt_lengths": lengths} if decoder_only and beam_size == 1 else {}
        tokens = np.asarray(generate(model, variables, batch, max_new_tokens=max_new_tokens, beam_size=beam_size,
                                     generation_config=generation_config, **kw))
        for b, n in enumerate(lengths):
            new = tokens[b, n:n + max_new_tokens] if decoder_only else tokens[b]
            outputs.append(tokenizer.decode(_cut(new, generation_config)))
    return outputs
