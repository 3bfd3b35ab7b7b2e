"""Text in, text out with a pretrained model: translate (encoder-decoder) or continue (decoder-only)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
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


def _stop(text: str, stop_strings: Sequence[str]) -> str:
    """text up to (not including) the earliest of the stop strings."""
    cut = min((i for i in (text.find(st) for st in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


def generate_text(model, variables, tokenizer, texts: Sequence[str], *, generation_config: GenerationConfig,
                  max_new_tokens: int, beam_size: int = 1, batch_size: int = 8, temperature: float = 0.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int = 0, repetition_penalty: float = 1.0,
                  no_repeat_ngram_size: int = 0, min_new_tokens: int = 0, num_return_sequences: int = 1,
                  stop_strings: Sequence[str] = ()) -> list[str]:
    """Output strings per input, `num_return_sequences` each, in order: a translation
    (`Transformer`) or a continuation (`DecoderLM`, the new text only). Sampling and the logit
    settings are `generate`'s. `stop_strings`: each output ends before the first occurrence of
    any of them (a text-level cut after generation: the tokens are generated to the length limit)."""
    if not isinstance(model, (Transformer, DecoderLM)):
        raise TypeError(f"generate_text: {type(model).__name__} does not generate; use a Transformer or DecoderLM")
    if any(not isinstance(st, str) or not st for st in stop_strings):
        raise ValueError(f"generate_text: stop strings must be non-empty strings; got {list(stop_strings)!r}")
    encoded = [tokenizer.encode(t) for t in texts]
    if any(not ids for ids in encoded):
        raise ValueError("generate_text: an input line encodes to no tokens; give non-empty lines")
    decoder_only = isinstance(model, DecoderLM)
    options = dict(max_new_tokens=max_new_tokens, beam_size=beam_size, generation_config=generation_config,
                   temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                   no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
                   num_return_sequences=num_return_sequences)
    if temperature > 0:
        options["rng"] = jax.random.key(seed)
    outputs = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start:start + batch_size]
        pad = generation_config.pad_id if decoder_only else (model.cfg.pad_id or 0)
        batch, lengths = _pad(rows, pad)
        kw = {"prompt_lengths": lengths} if decoder_only else {}
        tokens = np.asarray(generate(model, variables, batch, **options, **kw))
        for b, n in enumerate(np.repeat(lengths, num_return_sequences)):
            new = tokens[b, n:n + max_new_tokens] if decoder_only else tokens[b]
            outputs.append(_stop(tokenizer.decode(_cut(new, generation_config)), stop_strings))
    return outputs
