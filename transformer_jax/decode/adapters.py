"""Adapters from our models to the core (step, initial cache, prompt), `init_cache`, and
`generate`, the one public entry."""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax import Array

from transformer_jax.attention.module import BATCHED_CACHE, FRESH_CACHE
from transformer_jax.decode.config import GenerationConfig
from transformer_jax.decode.core import _is_any, _leaf_name, batched_by_name, beam_search, sample
from transformer_jax.model import DecoderLM, Transformer

# ---- adapters: (step, cache, prompt) for each model kind ----------------------------------------

_FRESH = {**FRESH_CACHE, "decode_index": 0}  # attention caches (the module knows its own), the decoder's index
_FIRST_STEP = ("cross_key", "cross_value")  # projected from the encoder output on the first step


def _fresh_cache(shapes) -> dict:
    """Shapes of a decode cache -> the cache before any step (indices 0, empty slots)."""
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        name = path[-1]
        if name in _FIRST_STEP:
            continue
        if name not in _FRESH:
            raise ValueError(f"init_cache: no fresh value known for cache entry {'/'.join(path)}; "
                             f"known: {', '.join(_FRESH)} (extend decode.adapters._FRESH)")
        out[path] = jnp.full(leaf.shape, _FRESH[name], leaf.dtype)
    return traverse_util.unflatten_dict(out)


def _encdec_cache(model: Transformer, batch_size: int) -> dict:
    cfg, tok = model.cfg, jnp.ones((batch_size, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((batch_size, 1, cfg.d_model), cfg.compute_dtype), tok, tok,
        decode=True, method=Transformer.decode)["cache"])
    return _fresh_cache(shapes)


def _decoder_lm_cache(model: DecoderLM, batch_size: int) -> dict:
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.ones((batch_size, 1), jnp.int32), decode=True)["cache"])
    return _fresh_cache(shapes)


def _encdec_prepare(model: Transformer, variables, src: Array, src_segment_ids, config):
    """Encode once; the step feeds the decoder one token, with the encoder output on the first step
    only (it creates the cross-attention cache). src and its segment ids ride in the cache so that
    beam search tiles them with the rest."""
    encoded = model.apply(variables, src, src_segment_ids=src_segment_ids, method=Transformer.encode)
    cache = {"model": init_cache(model, src.shape[0]), "src": src, "src_segment_ids": src_segment_ids}

    def step(cache, tokens):
        first = not any(_leaf_name(path) == "cross_key"
                        for path, _ in jax.tree_util.tree_leaves_with_path(cache["model"]))
        logits, state = model.apply(
            {**variables, "cache": cache["model"]}, encoded if first else None, cache["src"],
            tokens[:, None], src_segment_ids=cache["src_segment_ids"], decode=True, mutable=["cache"],
            method=Transformer.decode)
        return logits[:, 0], {**cache, "model": state["cache"]}

    prompt = jnp.full((src.shape[0], 1), config.decoder_start_id, jnp.int32)
    return step, cache, prompt, batched_by_name(BATCHED_CACHE + ("src", "src_segment_ids"))


def _decoder_lm_prepare(model: DecoderLM, variables, prompt: Array, src_segment_ids, config):
    def step(cache, tokens):
        logits, state = model.apply({**variables, "cache": cache}, tokens[:, None], decode=True,
                                    mutable=["cache"])
        return logits[:, 0], state["cache"]

    return step, init_cache(model, prompt.shape[0]), prompt, batched_by_name()


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How a model class plugs into the core: prepare(model, variables, inputs, src_segment_ids,
    config) -> (step, cache, prompt, batched); its fresh cache; its prompt length; whether the
    output keeps the prompt (decoder-only) or starts after it (encoder-decoder)."""

    prepare: Callable
    init_cache: Callable[[Any, int], Any]
    prompt_length: Callable[[Array], int]
    keeps_prompt: bool


ADAPTERS: dict[type, Adapter] = {
    Transformer: Adapter(_encdec_prepare, _encdec_cache, lambda src: 1, keeps_prompt=False),
    DecoderLM: Adapter(_decoder_lm_prepare, _decoder_lm_cache, lambda prompt: prompt.shape[1], keeps_prompt=True),
}


def _adapter(model) -> Adapter:
    for cls in type(model).__mro__:
        if cls in ADAPTERS:
            return ADAPTERS[cls]
    raise TypeError(f"generate: no adapter for {type(model).__name__}; supported: "
                    f"{', '.join(c.__name__ for c in ADAPTERS)} (for another model, write a step "
                    "function and call transformer_jax.decode.sample or beam_search)")


def init_cache(model, batch_size: int):
    """A fresh decode cache for `batch_size` rows: every index 0, nothing stored.

    Step it with `model.apply({"params": p, "cache": cache}, tokens[:, None], decode=True,
    mutable=["cache"])`, one position per call. For the encoder-decoder `Transformer`, the
    cross-attention entries are not in it: pass the encoder output to `Transformer.decode` on the
    first step (which creates them) and None afterwards. (`model.init(..., decode=True)["cache"]`
    is not fresh: init runs a step, so its indices are already 1.)
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"init_cache: batch_size must be a positive int; got {batch_size!r}")
    return _adapter(model).init_cache(model, batch_size)


# ---- the public entry ----------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("model", "config", "n", "beam_size", "temperature",
                                             "top_k", "top_p", "length_penalty"))
def _generate(model, config, variables, inputs, src_segment_ids, prompt_lengths, rng, *, n,
              beam_size, temperature, top_k, top_p, length_penalty):
    adapter = _adapter(model)
    step, cache, prompt, batched = adapter.prepare(model, variables, inputs, src_segment_ids, config)
    if beam_size > 1:
        out = beam_search(step, cache, prompt, max_new_tokens=n, beam_size=beam_size,
                          length_penalty=length_penalty, config=config, batched=batched)
    else:
        out = sample(step, cache, prompt, max_new_tokens=n, config=config, prompt_lengths=prompt_lengths,
                     temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
    return out if adapter.keeps_prompt else out[:, prompt.shape[1]:]


def _new_tokens(max_len, max_new_tokens, config: GenerationConfig, p: int, keeps_prompt: bool) -> int:
    """N from the arguments, else the config (HF precedence: max_new_tokens over max_length)."""
    if max_len is not None and max_new_tokens is not None:
        raise ValueError(f"generate: give max_len ({max_len}) or max_new_tokens ({max_new_tokens}), not both")
    if max_new_tokens is not None:
        n, what = max_new_tokens, f"max_new_tokens={max_new_tokens}"
    elif max_len is not None:  # the output width
        n, what = max_len - (p if keeps_prompt else 0), f"max_len={max_len}"
    elif config.max_new_tokens is not None:
        n, what = config.max_new_tokens, f"generation_config.max_new_tokens={config.max_new_tokens}"
    elif config.max_length is not None:  # HF counts the prompt, or the start token
        n, what = config.max_length - p, f"generation_config.max_length={config.max_length}"
    else:
        raise ValueError("generate: give max_len or max_new_tokens (or set them in generation_config)")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"generate: {what} leaves {n} tokens to generate after a prompt of {p}; need >= 1")
    return n


def _check_prompt_lengths(prompt_lengths, batch: int, p: int, beam_size: int):
    if prompt_lengths is None:
        return None
    lengths = jnp.asarray(prompt_lengths, jnp.int32)
    if lengths.shape != (batch,):
        raise ValueError(f"generate: prompt_lengths must have shape ({batch},); got {lengths.shape}")
    if isinstance(lengths, jax.core.Tracer):
        if beam_size > 1:
            raise ValueError("generate: beam search needs equal-length prompts; pass prompt_lengths=None")
        return lengths
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > p:
        raise ValueError(f"generate: prompt_lengths must be in [1, {p}] (the prompt width); got {low}..{high}")
    if beam_size > 1 and low != p:
        raise ValueError(f"generate: beam search needs equal-length prompts (all {p}); got lengths "
                         f"{low}..{high}; use beam_size=1 or group prompts by length")
    return lengths


def _default_config(model) -> GenerationConfig:
    """The library's ids, with the model's own padding token where it has one."""
    pad_id = getattr(model.cfg, "pad_id", None)
    return GenerationConfig() if pad_id is None else GenerationConfig(pad_id=pad_id)


def generate(model, variables, inputs: Array, *, max_len: int | None = None,
             max_new_tokens: int | None = None, beam_size: int = 1, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, rng: Array | None = None, length_penalty: float = 0.6,
             src_segment_ids: Array | None = None, prompt_lengths: Array | None = None,
             generation_config: GenerationConfig | None = None) -> Array:
    """Generate int32 tokens with any model in `ADAPTERS` (see the module docstring for layouts).

    Transformer: inputs = source [B, S]; output [B, N], the tokens after the start token.
    DecoderLM: inputs = right-padded prompts [B, P] with `prompt_lengths` [B] (default P);
    output [B, P + N]. `max_len` is the output width (N for the encoder-decoder, P + N for the
    decoder-only model); `max_new_tokens` is N. beam_size 1 with temperature 0 is greedy;
    temperature > 0 samples (top-k, top-p); beam_size > 1 is beam search with GNMT
    `length_penalty`. Special tokens and lengths come from `generation_config` (default: start 2,
    EOS 1, padding `model.cfg.pad_id`, else 0). Every error is raised here, before compiling.
    """
    config = _default_config(model) if generation_config is None else generation_config
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"generate: generation_config must be a GenerationConfig; got {type(config).__name__}")
    adapter = _adapter(model)
    inputs = jnp.asarray(inputs, jnp.int32)
    if inputs.ndim != 2 or inputs.shape[1] < 1:
        raise ValueError(f"generate: inputs must be int tokens [B, length >= 1]; got shape {inputs.shape}")
    if prompt_lengths is not None and not adapter.keeps_prompt:
        raise ValueError(f"generate: prompt_lengths is for decoder-only models; {type(model).__name__} "
                         "starts from the start token (use src_segment_ids or padding for the source)")
    p = adapter.prompt_length(inputs)
    n = _new_tokens(max_len, max_new_tokens, config, p, adapter.keeps_prompt)
    if p + n - 1 > model.cfg.max_len:  # positions the cache must hold: prompt, then all but the last
        raise ValueError(f"generate: a prompt of {p} plus {n} new tokens needs {p + n - 1} cache positions "
                         f"but the model's cfg.max_len is {model.cfg.max_len}")
    if not isinstance(beam_size, numbers.Integral) or beam_size < 1:
        raise ValueError(f"generate: beam_size must be an int >= 1; got {beam_size!r}")
    vocab = model.cfg.vocab_size
    if (temperature < 0 or not isinstance(top_k, numbers.Integral) or not 0 <= top_k <= vocab
            or not 0.0 < top_p <= 1.0):
        raise ValueError(f"generate: need temperature >= 0, top_k an int in [0, {vocab}], 0 < top_p <= 1; "
                         f"got temperature={temperature}, top_k={top_k!r}, top_p={top_p}")
    if beam_size > 1 and temperature > 0:
        raise ValueError("generate: beam search is deterministic; use temperature=0 with beam_size > 1")
    if temperature > 0 and rng is None:
        raise ValueError("generate: sampling (temperature > 0) needs rng")
    lengths = _check_prompt_lengths(prompt_lengths, inputs.shape[0], p, beam_size)
    return _generate(model, config, variables, inputs, src_segment_ids, lengths, rng, n=n,
                     beam_size=int(beam_size), temperature=float(temperature), top_k=int(top_k),
                     top_p=float(top_p), length_penalty=float(length_penalty))


def sequence_logprob(model: Transformer, variables, src: Array, tokens: Array, *,
                     generation_config: GenerationConfig | None = None) -> Array:
    """Sum of an encoder-decoder's log-probabilities of tokens [B, L] (generate's output), up to and
    including the first EOS and skipping padding; [B]."""
    config = _default_config(model) if generation_config is None else generation_config
    start = jnp.full((tokens.shape[0], 1), config.decoder_start_id, jnp.int32)
    tgt_in = jnp.concatenate([start, tokens[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(model.apply(variables, src, tgt_in))
    tok_logp = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    is_eos = _is_any(tokens, config.eos_ids)
    keep = ((jnp.cumsum(is_eos, axis=1) - is_eos) == 0) & ((tokens != config.pad_id) | is_eos)
    return jnp.sum(jnp.where(keep, tok_logp, 0.0), axis=1)
