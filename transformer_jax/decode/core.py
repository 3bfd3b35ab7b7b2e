"""The core of generation: a step function in, tokens out (sampling and beam search).

`step(cache, tokens [B]) -> (logits [B, V] float32, cache)`; nothing here knows a model.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.attention.module import BATCHED_CACHE
from jax.experimental import io_callback

from transformer_jax.decode.config import GenerationConfig
from transformer_jax.decode.processors import Processing, after_eos, force, is_any, place, process
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


_is_any = is_any  # kept for callers of the old private name
_force = force

Prefill = Callable[[Any, Array, Array], tuple[Array, Any]]  # (cache, prompt [B, P], lengths [B]) -> ([B, V], cache)


def _choose(logits: Array, temperature: float, top_k: int, top_p: float, key) -> tuple[Array, Array]:
    """Greedy (temperature 0) or sampled token [B] and its log-probability under the processed,
    filtered distribution [B]."""
    if temperature == 0.0:
        chosen = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits)
    else:
        filtered = filter_logits(logits, temperature, top_k, top_p)
        chosen = jax.random.categorical(key, filtered).astype(jnp.int32)
        logp = jax.nn.log_softmax(filtered)
    return chosen, jnp.take_along_axis(logp, chosen[:, None], axis=-1)[:, 0]


def sample(step: Step, cache, prompt: Array, *, max_new_tokens: int,
           config: GenerationConfig = GenerationConfig(), prompt_lengths: Array | None = None,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           rng: Array | None = None, prefill: Prefill | None = None,
           processing: Processing = Processing(), on_token: Callable | None = None,
           return_scores: bool = False):
    """Greedy (temperature 0) or sampled continuation of prompt [B, P] -> int32 [B, P + N].

    Row b's first prompt_lengths[b] tokens (default P) are its prompt; it then generates N =
    max_new_tokens tokens; `pad_id` follows its EOS and its end. With `prefill(cache, prompt,
    lengths) -> (logits [B, V] at each row's last prompt token, cache)` the prompt goes through
    the model in one parallel pass; without it, it is fed one token per step (forced while
    `position < prompt_length[b]`, as lm1b does), which any one-token step function supports.
    Then one `lax.while_loop` that stops once every row is done. Call it under `jax.jit`:

        step = lambda cache, tok: my_logits_and_cache(params, cache, tok)  # [B] -> [B, V], cache
        out = jax.jit(lambda c, p: sample(step, c, p, max_new_tokens=32))(cache, prompt)

    `processing`: the reference library's logit processors (repetition penalty, n-gram bans, a
    minimum of new tokens). `on_token(i, tokens [B], done [B])`, if given, is called on the host
    with each generated index i (streaming; `jax.experimental.io_callback`, ordered).
    `return_scores`: also return the summed log-probabilities [B] of each row's generated tokens
    (up to its EOS) under the processed distribution, as (tokens, scores).
    """
    b, p = prompt.shape
    n = max_new_tokens
    if n < 1 or p < 1:
        raise ValueError(f"sample: need a prompt of >= 1 tokens and max_new_tokens >= 1; got {p}, {n}")
    if temperature > 0 and rng is None:
        raise ValueError("sample: sampling (temperature > 0) needs rng")
    lengths = jnp.full((b,), p, jnp.int32) if prompt_lengths is None else jnp.asarray(prompt_lengths, jnp.int32)
    seq = place(prompt.astype(jnp.int32), lengths, jnp.full((b, n), config.pad_id, jnp.int32), config.pad_id)
    rows = jnp.arange(b)

    def choose(logits, cur, new_index, seq, key_index):
        """Process and pick the token at column cur [B] (generated index new_index)."""
        logits = process(logits, seq, cur, new_index, n, config, processing)
        key = None if temperature == 0.0 else jax.random.fold_in(rng, key_index)
        return _choose(logits, temperature, top_k, top_p, key)

    def emit(i, tokens, done):
        if on_token is not None:
            io_callback(lambda i, t, d: on_token(int(i), np.asarray(t), np.asarray(d)), None, i, tokens, done,
                        ordered=True)

    if prefill is None:
        if on_token is not None:
            raise ValueError("sample: streaming (on_token) needs a prefill function")
        return _sample_stepwise(step, cache, seq, lengths, n, config, choose, return_scores)

    logits, cache = prefill(cache, prompt.astype(jnp.int32), lengths)  # [B V]
    chosen, logp = choose(logits, lengths, jnp.zeros((b,), jnp.int32), seq, 0)
    seq = seq.at[rows, lengths].set(chosen)
    done = is_any(chosen, config.eos_ids)
    emit(0, chosen, done)

    def cond(state):
        i, _, _, done, _ = state
        return (i < n) & jnp.any(~done)

    def body(state):
        i, seq, cache, done, score = state
        cur = lengths + i
        logits, cache = step(cache, seq[rows, cur - 1])
        chosen, logp = choose(logits, cur, jnp.full((b,), i), seq, i)
        chosen = jnp.where(done, config.pad_id, chosen)
        seq = seq.at[rows, cur].set(chosen)
        score = score + jnp.where(done, 0.0, logp)
        emit(i, chosen, done)
        return i + 1, seq, cache, done | is_any(chosen, config.eos_ids), score

    _, seq, _, _, score = jax.lax.while_loop(cond, body, (jnp.array(1), seq, cache, done, logp))
    return (seq, score) if return_scores else seq


def _sample_stepwise(step, cache, seq, lengths, n, config, choose, return_scores):
    """The prompt fed one token per step (for step functions without a prefill)."""
    b, total = seq.shape
    end = lengths + n  # [B] one past each row's last position

    def advance(i, seq, cache, done, score):
        """Feed position i; fill position i + 1 where a row is generating."""
        logits, cache = step(cache, seq[:, i])  # [B V]
        j = i + 1
        chosen, logp = choose(logits, jnp.full((b,), j), j - lengths, seq, j)
        generating = (j >= lengths) & (j < end) & ~done
        seq = seq.at[:, j].set(jnp.where(generating, chosen, seq[:, j]))
        return seq, cache, done | (generating & is_any(chosen, config.eos_ids)), score + jnp.where(generating, logp, 0.0)

    state = advance(0, seq, cache, jnp.zeros((b,), bool), jnp.zeros((b,), jnp.float32))

    def cond(state):
        i, _, _, done, _ = state
        return (i < total - 1) & jnp.any(~done & (i + 1 < end))

    def body(state):
        i, seq, cache, done, score = state
        return (i + 1,) + advance(i, seq, cache, done, score)

    _, seq, _, _, score = jax.lax.while_loop(cond, body, (jnp.array(1),) + state)
    return (seq, score) if return_scores else seq


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


BEAM_SCORING = ("gnmt", "hf")


def beam_search(step: Step, cache, prompt: Array, *, max_new_tokens: int, beam_size: int,
                length_penalty: float = 0.6, config: GenerationConfig = GenerationConfig(),
                batched: Callable[[tuple, Any], int | bool | None] = batched_by_name(),
                prefill: Prefill | None = None, prompt_lengths: Array | None = None,
                processing: Processing = Processing(), num_return_sequences: int = 1,
                scoring: str = "gnmt", return_scores: bool = False):
    """Beam search continuing prompt [B, P] -> int32 [B, P + N], the best beam of each row (rows
    repeated `num_return_sequences` times in order, each with its next best beam: [B * r, P + N]).

    `scoring` picks the length normalisation of finished beams (sum of log-probabilities of the
    n generated tokens, EOS included, divided by):
    - "gnmt" (default): ((5 + n) / 6) ** length_penalty (Wu et al. 2016), EOS handling and early
      stopping as in Flax's WMT example: any of the 2K candidates may finish, and a row that never
      reaches EOS keeps its best live beam.
    - "hf": n ** length_penalty, as the reference library's `generate` (transformers 5): only the
      best K of the 2K candidates may finish, beams still alive at the last step count as finished,
      and the search stops when the best live beam, normalised by its current length, cannot beat
      the worst of K finished ones (its default `early_stopping=False` heuristic).
    With `prefill` (see `sample`) rows may have different `prompt_lengths`; without it the prompt
    is fed one token per step and must be of equal length. Then the cache leaves `batched` selects
    are tiled to B * K and reordered with the beams every step. `return_scores`: also the
    normalised score [B * r] of each returned beam.
    """
    b, p = prompt.shape
    k, n, r = beam_size, max_new_tokens, num_return_sequences
    if n < 1 or p < 1 or k < 1:
        raise ValueError(f"beam_search: need a prompt of >= 1 tokens, max_new_tokens >= 1 and beam_size >= 1; "
                         f"got {p}, {n}, {k}")
    if not 1 <= r <= k:
        raise ValueError(f"beam_search: num_return_sequences must be in [1, beam_size={k}]; got {r}")
    if scoring not in BEAM_SCORING:
        raise ValueError(f"beam_search: scoring must be one of {', '.join(BEAM_SCORING)}; got {scoring!r}")
    hf = scoring == "hf"
    prompt = prompt.astype(jnp.int32)
    lengths = jnp.full((b,), p, jnp.int32) if prompt_lengths is None else jnp.asarray(prompt_lengths, jnp.int32)
    if prefill is not None:
        logits, cache = prefill(cache, prompt, lengths)
    else:
        logits, cache = step(cache, prompt[:, 0])  # may add cache entries: outside any loop
        if p > 1:
            logits, cache = jax.lax.fori_loop(1, p, lambda i, c: step(c[1], prompt[:, i]), (logits, cache))
    cache = _map_batched(lambda x: jnp.repeat(x, k, axis=0), cache, batched, b)  # [B * K, ...]
    prompt_k, lengths_k = jnp.repeat(prompt, k, axis=0), jnp.repeat(lengths, k)  # [B*K P], [B*K]

    def penalty(length):
        return length ** length_penalty if hf else _length_penalty(length, length_penalty)

    def update(i, state, logp_next):
        """Grow the [B, K] beams by token i (logp_next [B * K, V]); keep K alive and K finished."""
        seqs, alive_logp, fin_seqs, fin_scores, cache = state
        history = place(prompt_k, lengths_k, seqs.reshape(b * k, n), config.pad_id)
        logp_next = process(logp_next, history, lengths_k + i, i, n, config, processing)
        vocab = logp_next.shape[-1]
        cand = (alive_logp[:, :, None] + logp_next.reshape(b, k, vocab)).reshape(b, k * vocab)
        top_logp, top_idx = jax.lax.top_k(cand, 2 * k)  # [B 2K]
        beam_idx, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        top_seqs = _gather_beams(seqs, beam_idx).at[:, :, i].set(token)  # [B 2K N]
        is_eos = is_any(token, config.eos_ids)
        # alive: the best K candidates that did not just end
        new_alive_logp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), k)
        new_seqs = jnp.take_along_axis(top_seqs, keep[..., None], axis=1)
        src_beam = jnp.take_along_axis(beam_idx, keep, axis=1)  # [B K]
        new_cache = _map_batched(  # [B * K, ...] -> [B, K, ...] -> reordered -> [B * K, ...]
            lambda x: _gather_beams(x.reshape((b, k) + x.shape[1:]), src_beam).reshape(x.shape),
            cache, batched, b * k)
        # finished: the best K among those already finished and those that just ended
        ends = is_eos
        if hf:  # only the top K may finish; at the length limit every top-K candidate finishes
            ends = (ends | (i == n - 1)) & (jnp.arange(2 * k) < k)[None, :] & (top_logp > NEG_INF / 2)
        ended = jnp.where(ends, top_logp / penalty(i + 1.0), NEG_INF)
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
        best_possible = alive_logp[:, 0] / (penalty(i * 1.0) if hf else _length_penalty(n, length_penalty))
        return (i < n) & jnp.any(best_possible > jnp.min(fin_scores, axis=1))

    def body(carry):
        i, state = carry
        seqs, cache = state[0], state[4]
        logits, cache = step(cache, seqs[:, :, i - 1].reshape(-1))
        return i + 1, update(i, state[:4] + (cache,), jax.nn.log_softmax(logits))

    _, (seqs, alive_logp, fin_seqs, fin_scores, _) = jax.lax.while_loop(cond, body, (jnp.array(1), state))
    # rows with fewer than r finished beams fill up with their best live ones
    live_scores = alive_logp / _length_penalty(n, length_penalty)
    pool_scores = jnp.concatenate([fin_scores, jnp.where(fin_scores[:, -1:] <= NEG_INF / 2, live_scores - 1e8,
                                                         NEG_INF)], axis=1)
    best_scores, pick = jax.lax.top_k(pool_scores, r)  # [B r]
    best = jnp.take_along_axis(jnp.concatenate([fin_seqs, seqs], axis=1), pick[..., None], axis=1)  # [B r N]
    live = pick >= k
    best_scores = jnp.where(live, jnp.take_along_axis(live_scores, jnp.clip(pick - k, 0, k - 1), axis=1),
                            best_scores).reshape(b * r)
    best = best.reshape(b * r, n)
    best = jnp.where(after_eos(best, config.eos_ids), config.pad_id, best)
    out = place(jnp.repeat(prompt, r, axis=0), jnp.repeat(lengths, r), best, config.pad_id)
    return (out, best_scores) if return_scores else out
