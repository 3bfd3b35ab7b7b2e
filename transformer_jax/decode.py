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
  lengths; the cache is fed one token at a time, forcing each row's prompt while
  `position < prompt_length[b]` (as lm1b does), then generating. Output [B, P + N]: each row's
  prompt, its N new tokens, `pad_id` after EOS and after the row's end. For equal-length prompts
  this is HF's decoder-only output (prompt then new tokens; `max_length = P + N`). HF pads prompts
  on the left under an attention mask; our cached step has no mask, so rows pad on the right.

Caches: `init_cache(model, batch_size)` gives a fresh cache (every index 0). Do not start from
`model.init(..., decode=True)["cache"]`: that call has already run one step, so its indices are 1
and every later logit is shifted by a position.

Special tokens and lengths come from `GenerationConfig` (which reads HF `generation_config.json`);
its defaults are this library's ids: start 2, EOS 1, padding 0 (`generate` pads with the model's
`cfg.pad_id` when no config is given).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax import Array

from transformer_jax.attention.module import BATCHED_CACHE
from transformer_jax.config import BOS_ID, EOS_ID, PAD_ID
from transformer_jax.model import DecoderLM, Transformer

NEG_INF = -1.0e9
Step = Callable[[Any, Array], tuple[Array, Any]]  # (cache, tokens [B]) -> (logits [B, V], cache)


# ---- configuration -------------------------------------------------------------------------------

# Hugging Face generation fields this module does not honour, with HF's defaults: a JSON that sets
# one to another value asks for behaviour we would silently drop, so from_dict warns.
_HF_UNHONOURED = {
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "temperature": 1.0, "top_k": 50,
    "top_p": 1.0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "length_penalty": 1.0, "early_stopping": False, "min_length": 0, "min_new_tokens": None,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None,
    "constraints": None, "diversity_penalty": 0.0, "penalty_alpha": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_decoder_ids": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "remove_invalid_values": False, "num_return_sequences": 1, "guidance_scale": None,
    "max_time": None, "stop_strings": None, "watermarking_config": None, "dola_layers": None,
    "token_healing": False,
}
# Fields that change nothing about the tokens (outputs, caching, bookkeeping): ignored silently.
_HF_COSMETIC = ("transformers_version", "output_attentions", "output_hidden_states", "output_scores",
                "output_logits", "return_dict_in_generate", "use_cache", "cache_implementation",
                "cache_config", "return_legacy_cache", "low_memory", "is_assistant",
                "num_assistant_tokens", "num_assistant_tokens_schedule",
                "assistant_confidence_threshold", "prompt_lookup_num_tokens",
                "max_matching_ngram_size", "generation_kwargs")


def _ids(value) -> tuple[int, ...]:
    """An id or a list of ids (HF allows both) -> a tuple of ints."""
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Special tokens and lengths of generation (the fields of HF's `GenerationConfig` we honour).

    decoder_start_id: first decoder input of an encoder-decoder (HF `decoder_start_token_id`).
    eos_ids: any of these ends a row (HF `eos_token_id`, an int or a list); () never ends early.
    pad_id: emitted after a row has ended.
    forced_bos_id: forced at the first generated position (HF `forced_bos_token_id`; HF applies it
      only when the input is one token long, so for decoder-only prompts longer than one token HF
      ignores it and we do not).
    forced_eos_id: forced at the last position, when the length runs out (HF
      `forced_eos_token_id`; a tuple makes all of them allowed, scored equally, as in HF).
    max_new_tokens, max_length: HF semantics; max_length counts the prompt (decoder-only) or the
      start token (encoder-decoder). Arguments to `generate` override both.
    """

    decoder_start_id: int = BOS_ID
    eos_ids: tuple[int, ...] = (EOS_ID,)
    pad_id: int = PAD_ID
    forced_bos_id: int | None = None
    forced_eos_id: int | tuple[int, ...] | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "eos_ids", _ids(self.eos_ids))
        if isinstance(self.forced_eos_id, list):
            object.__setattr__(self, "forced_eos_id", tuple(self.forced_eos_id))
        for name in ("max_new_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"GenerationConfig.{name} must be a positive int or None; got {value!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        """Read the fields of a Hugging Face generation config; warn about set fields we ignore."""
        given = {k: v for k, v in d.items() if v is not None}
        kw: dict[str, Any] = {}
        start = given.get("decoder_start_token_id", given.get("bos_token_id"))
        if start is not None:
            kw["decoder_start_id"] = int(start)
        if "eos_token_id" in given:
            kw["eos_ids"] = _ids(given["eos_token_id"])
        if "pad_token_id" in given:
            kw["pad_id"] = int(given["pad_token_id"])
        elif kw.get("eos_ids"):  # HF pads with the (first) EOS when the model has no pad token
            kw["pad_id"] = kw["eos_ids"][0]
        if "forced_bos_token_id" in given:
            kw["forced_bos_id"] = int(given["forced_bos_token_id"])
        if "forced_eos_token_id" in given:
            ids = _ids(given["forced_eos_token_id"])
            kw["forced_eos_id"] = ids[0] if len(ids) == 1 else ids
        for key in ("max_new_tokens", "max_length"):
            if key in given:
                kw[key] = int(given[key])
        honoured = {"decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
                    "forced_bos_token_id", "forced_eos_token_id", "max_new_tokens", "max_length"}
        ignored = sorted(k for k, v in d.items()
                         if k not in honoured and k not in _HF_COSMETIC and not k.startswith("_")
                         and v != _HF_UNHONOURED.get(k))
        if ignored:
            warnings.warn("GenerationConfig: ignoring generation settings transformer_jax does not "
                          f"honour: {', '.join(f'{k}={d[k]!r}' for k in ignored)} (sampling and beam "
                          "settings are arguments of generate)", UserWarning, stacklevel=2)
        return cls(**kw)

    @classmethod
    def from_json(cls, path) -> "GenerationConfig":
        """Read a Hugging Face `generation_config.json`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))


# ---- the core: a step function in, tokens out ----------------------------------------------------

def filter_logits(logits: Array, temperature: float, top_k: int, top_p: float) -> Array:
    """Temperature, then top-k, then nucleus (top-p, Holtzman et al. 2020) filtering; [B, V]."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the best token)
        cutoff_idx = jnp.sum(cum < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return logits


def _is_any(tokens: Array, ids: tuple[int, ...]) -> Array:
    """tokens == any of ids (static), elementwise bool."""
    return functools.reduce(jnp.logical_or, [tokens == i for i in ids], jnp.zeros(tokens.shape, bool))


def _force(logits: Array, new_index: Array, n: int, config: GenerationConfig) -> Array:
    """HF's forced BOS/EOS processors on [B, V] scores: at the forced position the allowed ids score
    0 and all others NEG_INF. new_index: the generated-token index being chosen (scalar or [B])."""
    vocab = jnp.arange(logits.shape[-1])
    for ids, at in ((config.forced_bos_id, 0), (config.forced_eos_id, n - 1)):  # HF order: EOS wins
        if ids is not None:
            forced = jnp.where(_is_any(vocab, _ids(ids)), 0.0, NEG_INF)  # [V]
            logits = jnp.where(jnp.reshape(new_index == at, (-1, 1)), forced, logits)
    return logits


def sample(step: Step, cache, prompt: Array, *, max_new_tokens: int,
           config: GenerationConfig = GenerationConfig(), prompt_lengths: Array | None = None,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           rng: Array | None = None) -> Array:
    """Greedy (temperature 0) or sampled continuation of prompt [B, P] -> int32 [B, P + N].

    Row b feeds its first prompt_lengths[b] tokens (default P), then generates N = max_new_tokens
    tokens; `pad_id` follows its EOS and its end. One `lax.while_loop` that stops once every row
    is done; the first step runs before it, so it may add cache entries. Call it under `jax.jit`:

        step = lambda cache, tok: my_logits_and_cache(params, cache, tok)  # [B] -> [B, V], cache
        out = jax.jit(lambda c, p: sample(step, c, p, max_new_tokens=32))(cache, prompt)
    """
    b, p = prompt.shape
    n = max_new_tokens
    if n < 1 or p < 1:
        raise ValueError(f"sample: need a prompt of >= 1 tokens and max_new_tokens >= 1; got {p}, {n}")
    if temperature > 0 and rng is None:
        raise ValueError("sample: sampling (temperature > 0) needs rng")
    total = p + n
    lengths = jnp.full((b,), p, jnp.int32) if prompt_lengths is None else jnp.asarray(prompt_lengths, jnp.int32)
    end = lengths + n  # [B] one past each row's last position
    cols = jnp.arange(total)[None, :]
    tokens = jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, n)))
    tokens = jnp.where(cols < lengths[:, None], tokens, config.pad_id)  # [B, P + N]

    def advance(i, tokens, cache, done):
        """Feed position i; fill position i + 1 where a row is generating."""
        logits, cache = step(cache, tokens[:, i])  # [B V]
        j = i + 1
        logits = _force(logits, j - lengths, n, config)
        if temperature == 0.0:
            chosen = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            key = jax.random.fold_in(rng, j)
            chosen = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)
        generating = (j >= lengths) & (j < end) & ~done
        tokens = tokens.at[:, j].set(jnp.where(generating, chosen, tokens[:, j]))
        return tokens, cache, done | (generating & _is_any(chosen, config.eos_ids))

    tokens, cache, done = advance(0, tokens, cache, jnp.zeros((b,), bool))

    def cond(state):
        i, _, _, done = state
        return (i < total - 1) & jnp.any(~done & (i + 1 < end))

    def body(state):
        i, tokens, cache, done = state
        return (i + 1,) + advance(i, tokens, cache, done)

    _, tokens, _, _ = jax.lax.while_loop(cond, body, (jnp.array(1), tokens, cache, done))
    return tokens


def _length_penalty(length, alpha: float):
    """GNMT length normalisation (Wu et al. 2016): ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(x: Array, indices: Array) -> Array:
    """Reorder the beams of x [B, beams, ...] by indices [B, K'] -> [B, K', ...]."""
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def _leaf_name(path) -> str | None:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None))


def batched_by_name(names: tuple[str, ...] = BATCHED_CACHE) -> Callable[[tuple, Any], bool]:
    """A `batched(path, leaf)` predicate: cache leaves with one of these names have a batch axis."""
    return lambda path, leaf: _leaf_name(path) in names


def _map_batched(fn, cache, batched, batch: int):
    """Apply fn to the cache leaves `batched` selects, after checking their leading axis is batch."""
    def go(path, x):
        if not batched(path, x):
            return x
        if jnp.ndim(x) < 1 or x.shape[0] != batch:
            raise ValueError(f"beam_search: cache entry {jax.tree_util.keystr(path)} is marked batched "
                             f"but its shape {jnp.shape(x)} has no leading batch axis of {batch}")
        return fn(x)
    return jax.tree_util.tree_map_with_path(go, cache)


def beam_search(step: Step, cache, prompt: Array, *, max_new_tokens: int, beam_size: int,
                length_penalty: float = 0.6, config: GenerationConfig = GenerationConfig(),
                batched: Callable[[tuple, Any], bool] = batched_by_name()) -> Array:
    """Beam search continuing prompt [B, P] (equal lengths) -> int32 [B, P + N], the best beam.

    GNMT length penalty ((5 + n) / 6) ** alpha over the n generated tokens, EOS handling and
    early stopping as in Flax's WMT example (HF's beam search divides by length ** alpha instead,
    counting the prompt, so beams can differ from HF's; greedy matches it exactly). The prompt is
    fed once per row, then the cache leaves `batched` selects (leading axis B) are tiled to B * K
    and reordered with the beams every step; other leaves (step counters) are shared.
    """
    b, p = prompt.shape
    k, n = beam_size, max_new_tokens
    if n < 1 or p < 1 or k < 1:
        raise ValueError(f"beam_search: need a prompt of >= 1 tokens, max_new_tokens >= 1 and beam_size >= 1; "
                         f"got {p}, {n}, {k}")
    prompt = prompt.astype(jnp.int32)
    logits, cache = step(cache, prompt[:, 0])  # may add cache entries: outside any loop
    if p > 1:
        logits, cache = jax.lax.fori_loop(1, p, lambda i, c: step(c[1], prompt[:, i]), (logits, cache))
    cache = _map_batched(lambda x: jnp.repeat(x, k, axis=0), cache, batched, b)  # [B * K, ...]
    max_penalty = _length_penalty(n, length_penalty)

    def update(i, state, logp_next):
        """Grow the [B, K] beams by token i (logp_next [B * K, V]); keep K alive and K finished."""
        seqs, alive_logp, fin_seqs, fin_scores, cache = state
        logp_next = _force(logp_next, i, n, config)
        vocab = logp_next.shape[-1]
        cand = (alive_logp[:, :, None] + logp_next.reshape(b, k, vocab)).reshape(b, k * vocab)
        top_logp, top_idx = jax.lax.top_k(cand, 2 * k)  # [B 2K]
        beam_idx, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        top_seqs = _gather_beams(seqs, beam_idx).at[:, :, i].set(token)  # [B 2K N]
        is_eos = _is_any(token, config.eos_ids)
        # alive: the best K candidates that did not just end
        new_alive_logp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), k)
        new_seqs = jnp.take_along_axis(top_seqs, keep[..., None], axis=1)
        src_beam = jnp.take_along_axis(beam_idx, keep, axis=1)  # [B K]
        new_cache = _map_batched(  # [B * K, ...] -> [B, K, ...] -> reordered -> [B * K, ...]
            lambda x: _gather_beams(x.reshape((b, k) + x.shape[1:]), src_beam).reshape(x.shape),
            cache, batched, b * k)
        # finished: the best K among those already finished and those that just ended
        ended = jnp.where(is_eos, top_logp / _length_penalty(i + 1.0, length_penalty), NEG_INF)
        fin_scores, pick = jax.lax.top_k(jnp.concatenate([fin_scores, ended], axis=1), k)
        fin_seqs = jnp.take_along_axis(jnp.concatenate([fin_seqs, top_seqs], axis=1), pick[..., None], axis=1)
        return new_seqs, new_alive_logp, fin_seqs, fin_scores, new_cache

    seqs = jnp.full((b, k, n), config.pad_id, jnp.int32)
    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (b, 1))  # one live beam at first
    fin_scores = jnp.full((b, k), NEG_INF)
    logp0 = jnp.repeat(jax.nn.log_softmax(logits), k, axis=0)
    state = update(0, (seqs, alive_logp, seqs, fin_scores, cache), logp0)

    def cond(carry):
        i, (_, alive_logp, _, fin_scores, _) = carry
        best_possible = alive_logp[:, 0] / max_penalty
        return (i < n) & jnp.any(best_possible > jnp.min(fin_scores, axis=1))

    def body(carry):
        i, state = carry
        seqs, cache = state[0], state[4]
        logits, cache = step(cache, seqs[:, :, i - 1].reshape(-1))
        return i + 1, update(i, state[:4] + (cache,), jax.nn.log_softmax(logits))

    _, (seqs, _, fin_seqs, fin_scores, _) = jax.lax.while_loop(cond, body, (jnp.array(1), state))
    none_finished = jnp.all(fin_scores <= NEG_INF / 2, axis=1)  # such rows keep their best live beam
    best = jnp.where(none_finished[:, None], seqs[:, 0], fin_seqs[:, 0])  # [B N]
    is_eos = _is_any(best, config.eos_ids)
    after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
    return jnp.concatenate([prompt, jnp.where(after_eos, config.pad_id, best)], axis=1)


# ---- adapters: (step, cache, prompt) for each model kind ----------------------------------------

_FRESH = {"cached_key": 0, "cached_value": 0, "cached_pos": -1, "cache_index": 0, "decode_index": 0}
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
                             f"known: {', '.join(_FRESH)} (extend decode._FRESH)")
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
