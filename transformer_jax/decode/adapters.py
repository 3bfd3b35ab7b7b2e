"""Adapters from our models to the core (step, initial cache, prompt), `init_cache`, and
`generate`, the one public entry."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import Array

from transformer_jax.attention.module import BATCHED_CACHE, CACHE_SLOT_AXIS, FRESH_CACHE, PREFILL
from transformer_jax.decode.config import GenerationConfig
from transformer_jax.decode.core import BEAM_SCORING, _is_any, _leaf_name, batched_by_name, beam_search, sample
from transformer_jax.decode.processors import Processing, new_lengths
from transformer_jax.model import DecoderLM, Transformer
from transformer_jax.scan import SCAN_NAME

# ---- adapters: (step, cache, prompt) for each model kind ----------------------------------------

_FRESH = {**FRESH_CACHE, "decode_index": 0}  # attention caches (the module knows its own), the decoder's index
_FIRST_STEP = ("cross_key", "cross_value")  # projected from the encoder output on the first step
_DECODER_BATCHED = ("decode_index",)  # the decoder's per-row position


def _fresh_cache(shapes, length: int | None = None) -> dict:
    """Shapes of a decode cache -> the cache before any step (indices 0, empty slots), its key/value
    slots cut to `length` positions where given (a ring buffer that is shorter stays as it is)."""
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        name = path[-1]
        if name in _FIRST_STEP:
            continue
        if name not in _FRESH:
            raise ValueError(f"init_cache: no fresh value known for cache entry {'/'.join(path)}; "
                             f"known: {', '.join(_FRESH)} (extend decode.adapters._FRESH)")
        shape = list(leaf.shape)
        if length is not None and name in CACHE_SLOT_AXIS:
            axis = (1 if SCAN_NAME in path else 0) + CACHE_SLOT_AXIS[name]
            shape[axis] = min(shape[axis], length)
        out[path] = jnp.full(shape, _FRESH[name], leaf.dtype)
    return traverse_util.unflatten_dict(out)


def _encdec_cache(model: Transformer, batch_size: int, length: int | None = None) -> dict:
    cfg, tok = model.cfg, jnp.ones((batch_size, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((batch_size, 1, cfg.d_model), cfg.compute_dtype), tok, tok,
        decode=True, method=Transformer.decode)["cache"])
    return _fresh_cache(shapes, length)


def _decoder_lm_cache(model: DecoderLM, batch_size: int, length: int | None = None) -> dict:
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.ones((batch_size, 1), jnp.int32), decode=True)["cache"])
    return _fresh_cache(shapes, length)


class Prepared(NamedTuple):
    """A model ready for the core: `step(cache, tokens [B]) -> (logits [B, V], cache)`;
    `prefill(cache, prompt [B, P], lengths [B]) -> (logits [B, V] after each row's prompt, cache)`,
    on the fresh cache only (it attends to the prompt alone);
    `chunk(cache, tokens [B, T]) -> (logits [B, T, V], cache)` (T positions per row at once, for
    speculative decoding); the initial cache; the prompt the core continues; which cache leaves
    carry the batch (`core.batched_by_name`)."""

    step: Callable
    prefill: Callable
    chunk: Callable
    cache: Any
    prompt: Array
    batched: Callable


def _fresh(model, batch_size: int, length: int | None):
    """`init_cache`, opaque to XLA: made inside the jitted generation, the empty cache would be a
    constant, and XLA would evaluate any attention over it while compiling (constant folding:
    seconds per layer, a minute for a 1 x 512-token prompt before prefills skipped the empty cache;
    steps without a prefill still read it)."""
    return jax.lax.optimization_barrier(init_cache(model, batch_size, length))


def _encdec_prepare(model: Transformer, variables, src: Array, src_segment_ids, config,
                    cache_length: int | None = None) -> Prepared:
    """Encode once; the decoder's first call gets the encoder output (it creates the cross-attention
    cache, once per source), later calls None. src and its segment ids ride in the cache so that
    beam search tiles them with the rest."""
    encoded = model.apply(variables, src, src_segment_ids=src_segment_ids, method=Transformer.encode)
    cache = {"model": _fresh(model, src.shape[0], cache_length), "src": src,
             "src_segment_ids": src_segment_ids}

    def chunk(cache, tokens, segment_ids=None, logits_at=None, decode=True):
        first = not any(_leaf_name(path) == "cross_key"
                        for path, _ in jax.tree_util.tree_leaves_with_path(cache["model"]))
        logits, state = model.apply(
            {**variables, "cache": cache["model"]}, encoded if first else None, cache["src"],
            tokens, src_segment_ids=cache["src_segment_ids"], tgt_segment_ids=segment_ids, decode=decode,
            logits_at=logits_at, mutable=["cache"], method=Transformer.decode)
        return logits, {**cache, "model": state["cache"]}

    def step(cache, tokens):
        logits, cache = chunk(cache, tokens[:, None])
        return logits[:, 0], cache

    def prefill(cache, prompt, lengths):
        segment_ids = (jnp.arange(prompt.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
        logits, cache = chunk(cache, prompt, segment_ids, (lengths - 1)[:, None], PREFILL)  # a fresh cache
        return logits[:, 0], cache

    prompt = jnp.full((src.shape[0], 1), config.decoder_start_id, jnp.int32)
    return Prepared(step, prefill, chunk, cache, prompt,
                    batched_by_name(BATCHED_CACHE + _DECODER_BATCHED + ("src", "src_segment_ids")))


def _decoder_lm_prepare(model: DecoderLM, variables, prompt: Array, src_segment_ids, config,
                        cache_length: int | None = None) -> Prepared:
    def chunk(cache, tokens, segment_ids=None, logits_at=None, decode=True):
        logits, state = model.apply({**variables, "cache": cache}, tokens, segment_ids=segment_ids,
                                    decode=decode, logits_at=logits_at, mutable=["cache"])
        return logits, state["cache"]

    def step(cache, tokens):
        logits, cache = chunk(cache, tokens[:, None])
        return logits[:, 0], cache

    def prefill(cache, prompt, lengths):
        segment_ids = (jnp.arange(prompt.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
        logits, cache = chunk(cache, prompt, segment_ids, (lengths - 1)[:, None], PREFILL)  # a fresh cache
        return logits[:, 0], cache

    return Prepared(step, prefill, chunk, _fresh(model, prompt.shape[0], cache_length), prompt,
                    batched_by_name(BATCHED_CACHE + _DECODER_BATCHED))


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How a model class plugs into the core: prepare(model, variables, inputs, src_segment_ids,
    config, cache_length) -> `Prepared`; its fresh cache (model, batch, length); its prompt
    length; whether the output keeps the prompt (decoder-only) or starts after it (encoder-decoder)."""

    prepare: Callable
    init_cache: Callable[..., Any]
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


def init_cache(model, batch_size: int, length: int | None = None):
    """A fresh decode cache for `batch_size` rows: every index 0, nothing stored; `length`
    positions (default `cfg.max_len`; `generate` sizes it to the prompt and the new tokens).

    Step it with `model.apply({"params": p, "cache": cache}, tokens, decode=True,
    mutable=["cache"])`: tokens [B, T], T >= 1 positions per call (a prompt in one parallel pass,
    then one token at a time), with `segment_ids` [B, T] marking right padding when rows advance by
    different amounts. For the encoder-decoder `Transformer`, the cross-attention entries are not
    in it: pass the encoder output to `Transformer.decode` on the first step (which creates them)
    and None afterwards. (`model.init(..., decode=True)["cache"]` is not fresh: init runs a step,
    so its indices are already 1.)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"init_cache: batch_size must be a positive int; got {batch_size!r}")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"init_cache: length must be a positive int or None; got {length!r}")
    return _adapter(model).init_cache(model, batch_size, length)


def cache_bucket(positions: int, max_len: int) -> int:
    """Cache positions for a generation that needs `positions`: the next of 16, 24, 32, 48, 64, 96,
    ... (powers of two and 1.5x them, so new lengths rarely recompile and at most a third is
    spare), capped at the model's `max_len`."""
    size = 16
    while size < positions:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return min(size, max_len)


# ---- the public entry ----------------------------------------------------------------------------

class GenerateOutput(NamedTuple):
    """`generate(..., return_dict=True)`: sequences int32 (the array `generate` returns by default);
    lengths int32 [rows]: the real tokens of each row (decoder-only: prompt + new tokens up to and
    including EOS; encoder-decoder: the new tokens up to and including EOS), so EOS and padding can
    be told apart; scores float32 [rows]: beam search's normalised score of the returned beam, else
    the sum of the log-probabilities of the new tokens under the processed distribution."""

    sequences: Array
    lengths: Array
    scores: Array


@functools.partial(jax.jit, static_argnames=("model", "config", "n", "beam_size", "temperature",
                                             "top_k", "top_p", "length_penalty", "processing",
                                             "num_return_sequences", "beam_scoring", "on_token"))
def _generate(model, config, variables, inputs, src_segment_ids, prompt_lengths, rng, *, n,
              beam_size, temperature, top_k, top_p, length_penalty, processing=Processing(),
              num_return_sequences=1, beam_scoring="gnmt", on_token=None):
    adapter = _adapter(model)
    r = num_return_sequences
    if r > 1 and beam_size == 1:  # sampling: each row r times (the reference library's layout)
        inputs = jnp.repeat(inputs, r, axis=0)
        src_segment_ids = None if src_segment_ids is None else jnp.repeat(src_segment_ids, r, axis=0)
        prompt_lengths = None if prompt_lengths is None else jnp.repeat(prompt_lengths, r)
    p = adapter.prompt_length(inputs)
    prepared = adapter.prepare(model, variables, inputs, src_segment_ids, config,
                               cache_bucket(p + n - 1, model.cfg.max_len))
    prompt = prepared.prompt
    lengths = (jnp.full((prompt.shape[0],), prompt.shape[1], jnp.int32) if prompt_lengths is None
               else prompt_lengths)
    if beam_size > 1:
        out, scores = beam_search(prepared.step, prepared.cache, prompt, max_new_tokens=n, beam_size=beam_size,
                                  length_penalty=length_penalty, config=config, batched=prepared.batched,
                                  prefill=prepared.prefill, prompt_lengths=lengths, processing=processing,
                                  num_return_sequences=r, scoring=beam_scoring, return_scores=True)
        lengths = jnp.repeat(lengths, r)
    else:
        out, scores = sample(prepared.step, prepared.cache, prompt, max_new_tokens=n, config=config,
                             prompt_lengths=lengths, temperature=temperature, top_k=top_k, top_p=top_p,
                             rng=rng, prefill=prepared.prefill, processing=processing, on_token=on_token,
                             return_scores=True)
    rows = jnp.arange(out.shape[0])[:, None]
    new = out[rows, lengths[:, None] + jnp.arange(n)[None, :]]  # [rows N]
    generated = new_lengths(new, config.eos_ids)
    if adapter.keeps_prompt:
        return GenerateOutput(out, lengths + generated, scores)
    return GenerateOutput(out[:, prompt.shape[1]:], generated, scores)


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


def _check_prompt_lengths(prompt_lengths, batch: int, p: int):
    if prompt_lengths is None:
        return None
    lengths = jnp.asarray(prompt_lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"generate: prompt_lengths must have shape ({batch},); got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"generate: prompt_lengths must be ints; got dtype {lengths.dtype}")
    lengths = lengths.astype(jnp.int32)
    if isinstance(lengths, jax.core.Tracer):
        return lengths
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > p:
        raise ValueError(f"generate: prompt_lengths must be in [1, {p}] (the prompt width); got {low}..{high}")
    return lengths


def _positive_int(name: str, value, allow_none: bool = True):
    """An int >= 1 (not a bool), or None where allowed; a ValueError naming the argument otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"generate: {name} must be an int >= 1{' or None' if allow_none else ''}; got {value!r}")
    return int(value)


def _finite(name: str, value, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or (
            low is not None and value < low):
        raise ValueError(f"generate: {name} must be a finite number{'' if low is None else f' >= {low}'}; "
                         f"got {value!r}")
    return float(value)


def _check_tokens(inputs, vocab: int):
    """int tokens [B, L >= 1] in [0, vocab): float, bool and negative ids are named errors."""
    dtype = getattr(inputs, "dtype", None)
    if dtype is None:
        array = np.asarray(inputs)
        dtype = array.dtype
    if dtype == np.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"generate: inputs must be int token ids; got dtype {dtype}")
    tokens = jnp.asarray(inputs, jnp.int32)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(f"generate: inputs must be int tokens [B, length >= 1]; got shape {tokens.shape}")
    if not isinstance(tokens, jax.core.Tracer):
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"generate: token ids must be in [0, {vocab}) (the model's vocab_size); "
                             f"got {low}..{high}")
    return tokens


def _default_config(model) -> GenerationConfig:
    """The library's ids, with the model's own padding token where it has one."""
    pad_id = getattr(model.cfg, "pad_id", None)
    return GenerationConfig() if pad_id is None else GenerationConfig(pad_id=pad_id)


def generate(model, variables, inputs: Array, *, max_len: int | None = None,
             max_new_tokens: int | None = None, beam_size: int = 1, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, rng: Array | None = None, length_penalty: float = 0.6,
             src_segment_ids: Array | None = None, prompt_lengths: Array | None = None,
             generation_config: GenerationConfig | None = None, num_return_sequences: int = 1,
             repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
             beam_scoring: str = "gnmt", on_token: Callable | None = None, return_dict: bool = False):
    """Generate int32 tokens with any model in `ADAPTERS` (see the module docstring for layouts).

    Transformer: inputs = source [B, S]; output [B, N], the tokens after the start token.
    DecoderLM: inputs = right-padded prompts [B, P] with `prompt_lengths` [B] (default P);
    output [B, P + N]. The prompt goes through the model in one parallel pass (the prefill) into
    a cache of P + N positions rounded up to a few sizes (`cache_bucket`); then one token per step.
    `max_len` is the output width (N for the encoder-decoder, P + N for the decoder-only model);
    `max_new_tokens` is N. beam_size 1 with temperature 0 is greedy; temperature > 0 samples
    (top-k, top-p); beam_size > 1 is beam search with `length_penalty` normalised as
    `beam_scoring` says ("gnmt", the default, or "hf", the reference library's; see
    `core.beam_search`). `num_return_sequences` r: r samples per row (rows repeated in order) or
    the r best beams; [B * r, ...]. `repetition_penalty`, `no_repeat_ngram_size` and
    `min_new_tokens` act as in the reference library (`decode.processors`). `on_token(i, tokens
    [rows], done [rows])` is called on the host as each token is made (not with beam search).
    `return_dict=True` returns a `GenerateOutput` (sequences, lengths, scores). Special tokens and
    lengths come from `generation_config` (default: start 2, EOS 1, padding `model.cfg.pad_id`,
    else 0). Every error is raised here, before compiling.
    """
    config = _default_config(model) if generation_config is None else generation_config
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"generate: generation_config must be a GenerationConfig; got {type(config).__name__}")
    adapter = _adapter(model)
    vocab = model.cfg.vocab_size
    inputs = _check_tokens(inputs, vocab)
    if prompt_lengths is not None and not adapter.keeps_prompt:
        raise ValueError(f"generate: prompt_lengths is for decoder-only models; {type(model).__name__} "
                         "starts from the start token (use src_segment_ids or padding for the source)")
    max_len = _positive_int("max_len", max_len)
    max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
    beam_size = _positive_int("beam_size", beam_size, allow_none=False)
    r = _positive_int("num_return_sequences", num_return_sequences, allow_none=False)
    p = adapter.prompt_length(inputs)
    n = _new_tokens(max_len, max_new_tokens, config, p, adapter.keeps_prompt)
    if p + n - 1 > model.cfg.max_len:  # positions the cache must hold: prompt, then all but the last
        raise ValueError(f"generate: a prompt of {p} plus {n} new tokens needs {p + n - 1} cache positions "
                         f"but the model's cfg.max_len is {model.cfg.max_len}")
    if not adapter.keeps_prompt and model.cfg.position == "learned" and inputs.shape[1] > model.cfg.max_len:
        raise ValueError(f"generate: a source of {inputs.shape[1]} tokens, but the model's learned positions "
                         f"end at cfg.max_len = {model.cfg.max_len}: cut the sources (a task's data.max_src_len)")
    temperature = _finite("temperature", temperature, 0.0)
    length_penalty = _finite("length_penalty", length_penalty)
    top_p = _finite("top_p", top_p)
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 0 <= top_k <= vocab or not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: need temperature >= 0, top_k an int in [0, {vocab}], 0 < top_p <= 1; "
                         f"got temperature={temperature}, top_k={top_k!r}, top_p={top_p}")
    if beam_size > 1 and temperature > 0:
        raise ValueError("generate: beam search is deterministic; use temperature=0 with beam_size > 1")
    if temperature > 0 and rng is None:
        raise ValueError("generate: sampling (temperature > 0) needs rng")
    if r > 1 and beam_size == 1 and temperature == 0:
        raise ValueError(f"generate: num_return_sequences={r} needs sampling (temperature > 0) or beam search "
                         "(beam_size >= num_return_sequences); greedy gives one sequence per row")
    if r > beam_size > 1:
        raise ValueError(f"generate: num_return_sequences={r} must be <= beam_size={beam_size}")
    if beam_scoring not in BEAM_SCORING:
        raise ValueError(f"generate: beam_scoring must be one of {', '.join(BEAM_SCORING)}; got {beam_scoring!r}")
    if on_token is not None and (beam_size > 1 or not callable(on_token)):
        raise ValueError("generate: on_token must be a callable, and streams greedy or sampled tokens "
                         "(beam search settles its tokens only at the end)")
    processing = Processing(repetition_penalty, no_repeat_ngram_size, min_new_tokens)
    lengths = _check_prompt_lengths(prompt_lengths, inputs.shape[0], p)
    out = _generate(model, config, variables, inputs, src_segment_ids, lengths, rng, n=n,
                    beam_size=beam_size, temperature=temperature, top_k=int(top_k), top_p=top_p,
                    length_penalty=length_penalty, processing=processing, num_return_sequences=r,
                    beam_scoring=beam_scoring, on_token=on_token)
    return out if return_dict else out.sequences


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
