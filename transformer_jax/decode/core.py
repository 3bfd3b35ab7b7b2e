"""The core of generation: a step function in, tokens out (sampling and beam search).

`step(cache, tokens [B]) -> (logits [B, V] float32, cache)`; nothing here knows a model.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array

from transformer_jax.attention.module import BATCHED_CACHE
from transformer_jax.decode.config import GenerationConfig, _ids
from transformer_jax.scan import SCAN_NAME

NEG_INF = -1.0e9
Step = Callable[[Any, Array], tuple[Array, Any]]  # (cache, tokens [B]) -> (logits [B, V], cache)


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


def batched_by_name(names: tuple[str, ...] = BATCHED_CACHE) -> Callable[[tuple, Any], int | None]:
    """A `batched(path, leaf)` predicate: cache leaves with one of these names have a batch axis,
    the leading one, or the second inside a scanned stack (a `layers` key in the path: the stacked
    layer axis leads, see transformer_jax.scan); None for the others."""
    def batched(path, leaf):
        if _leaf_name(path) not in names:
            return None
        return 1 if any(getattr(k, "key", None) == SCAN_NAME for k in path) else 0
    return batched


def _map_batched(fn, cache, batched, batch: int):
    """Apply fn (to a batch-leading array) to the cache leaves `batched` selects, after checking
    their batch axis. `batched(path, leaf)` gives that axis (True: 0), or None / False: not batched."""
    def go(path, x):
        axis = batched(path, x)
        if axis is None or axis is False:
            return x
        axis = 0 if axis is True else axis
        if jnp.ndim(x) <= axis or x.shape[axis] != batch:
            raise ValueError(f"beam_search: cache entry {jax.tree_util.keystr(path)} is marked batched "
                             f"but its shape {jnp.shape(x)} has no batch axis of {batch} at axis {axis}")
        return jnp.moveaxis(fn(jnp.moveaxis(x, axis, 0)), 0, axis)
    return jax.tree_util.tree_map_with_path(go, cache)


def beam_search(step: Step, cache, prompt: Array, *, max_new_tokens: int, beam_size: int,
                length_penalty: float = 0.6, config: GenerationConfig = GenerationConfig(),
                batched: Callable[[tuple, Any], int | bool | None] = batched_by_name()) -> Array:
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
