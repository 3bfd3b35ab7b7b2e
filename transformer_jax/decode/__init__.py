"""Autoregressive generation: a core that takes a step function, and thin adapters for our models.

The core (`sample`, `beam_search`) knows nothing about any model. It takes
`step(cache, tokens [B]) -> (logits [B, V] float32, cache)`, an initial cache and a prompt, as
flax's lm1b `temperature_sampler(tokens_to_logits, cache, ...)` does, so any model with a one-token
cached step can generate. Call the core inside `jax.jit`; `generate` does. The first step runs
outside the `lax.while_loop`, so it may add cache entries (the encoder-decoder's cross-attention
keys and values are projected there, once per source); every later step keeps the cache's shape.

Adapters turn a model into (step, initial cache, prompt), looked up by class in `ADAPTERS`:
- `Transformer` (encoder-decoder): encode once; the prompt is one start token per row. Output
  int32 [B, N]: the N tokens after the start token, EOS included, `pad_id` after it. Hugging Face's
  `generate` returns the start token too, and stops at the longest row: HF's output equals
  `[start] + ours`, cut after the column where the last row ends (our width is always N).
  HF's `max_length` counts that start token: `max_length = N + 1`.
- `DecoderLM` (decoder-only): prompt continuation. Prompts are right-padded [B, P] with per-row
  lengths; the prompt goes through the model in one parallel pass (the prefill) that writes every
  layer's cache, and each row continues from its own end (the caches keep one index per row).
  Output [B, P + N]: each row's prompt, its N new tokens, `pad_id` after EOS and after the row's
  end. For equal-length prompts this is HF's decoder-only output (prompt then new tokens;
  `max_length = P + N`); HF pads prompts on the left under an attention mask, and its new tokens
  equal ours for the same prompts (tests/test_generation_options.py).

Caches: `init_cache(model, batch_size, length=None)` gives a fresh cache (every index 0);
`generate` sizes it to P + N positions rounded up (`cache_bucket`). Do not start from
`model.init(..., decode=True)["cache"]`: that call has already run one step, so its indices are 1
and every later logit is shifted by a position.

Special tokens and lengths come from `GenerationConfig` (which reads HF `generation_config.json`);
its defaults are this library's ids: start 2, EOS 1, padding 0 (`generate` pads with the model's
`cfg.pad_id` when no config is given).
"""

from transformer_jax.decode.adapters import (ADAPTERS, Adapter, GenerateOutput, Prepared, cache_bucket, generate,
                                             init_cache, sequence_logprob)
from transformer_jax.decode.config import GenerationConfig
from transformer_jax.decode.core import BEAM_SCORING, NEG_INF, Step, batched_by_name, beam_search, filter_logits, sample
from transformer_jax.decode.processors import Processing
from transformer_jax.decode.speculative import SpeculativeStats, speculative_generate

__all__ = ["ADAPTERS", "Adapter", "BEAM_SCORING", "GenerateOutput", "GenerationConfig", "NEG_INF", "Prepared",
           "Processing", "Step", "batched_by_name", "beam_search", "cache_bucket", "filter_logits", "generate",
           "init_cache", "sample", "sequence_logprob", "SpeculativeStats", "speculative_generate"]
