"""Autoregressive decoding for the encoder-decoder: greedy, sampling and beam search.

Each strategy is one jit-compiled `lax.while_loop`. The source is encoded once; the first step
creates the KV cache (cross-attention keys and values are projected there, once per source), and
every later step feeds one token. Output: int32 [B, max_len] tokens after BOS, EOS included,
zeros after it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from transformer_jax.attention.module import BATCHED_CACHE
from transformer_jax.config import BOS_ID, EOS_ID
from transformer_jax.model import Transformer

NEG_INF = -1.0e9


def _first_step(model: Transformer, params, src, src_segment_ids):
    """Encode and run the BOS step: returns logits [B, V] and the new cache."""
    encoded = model.apply({"params": params}, src, src_segment_ids=src_segment_ids,
                          method=Transformer.encode)
    bos = jnp.full((src.shape[0], 1), BOS_ID, jnp.int32)
    logits, state = model.apply({"params": params}, encoded, src, bos, src_segment_ids=src_segment_ids,
                                decode=True, mutable=["cache"], method=Transformer.decode)
    return logits[:, 0], state["cache"]


def _next_step(model: Transformer, params, cache, src, src_segment_ids, tokens: Array):
    """One cached step on tokens [B] -> logits [B, V], new cache."""
    logits, state = model.apply({"params": params, "cache": cache}, None, src, tokens[:, None],
                                src_segment_ids=src_segment_ids, decode=True, mutable=["cache"],
                                method=Transformer.decode)
    return logits[:, 0], state["cache"]


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


@functools.partial(jax.jit, static_argnames=("model", "max_len", "temperature", "top_k", "top_p"))
def _sample(model, params, src, src_segment_ids, rng, *, max_len, temperature, top_k, top_p):
    batch = src.shape[0]

    def choose(logits, i):
        if temperature == 0.0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        key = jax.random.fold_in(rng, i)
        return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)

    logits, cache = _first_step(model, params, src, src_segment_ids)
    first = choose(logits, 0)
    tokens = jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(first)

    def cond(state):
        i, _, _, done = state
        return (i < max_len) & ~jnp.all(done)

    def body(state):
        i, tokens, cache, done = state
        logits, cache = _next_step(model, params, cache, src, src_segment_ids, tokens[:, i - 1])
        nxt = jnp.where(done, 0, choose(logits, i))
        return i + 1, tokens.at[:, i].set(nxt), cache, done | (nxt == EOS_ID)

    _, tokens, _, _ = jax.lax.while_loop(cond, body, (jnp.array(1), tokens, cache, first == EOS_ID))
    return tokens


def _length_penalty(length, alpha: float):
    """GNMT length normalisation (Wu et al. 2016): ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree, indices: Array, batch: int, beams: int):
    """Reorder the beams of [B * beams, ...] (or [B, beams, ...]) arrays by indices [B, K']."""
    def gather(x):
        flat = x.shape[0] == batch * beams and x.ndim >= 1
        x = x.reshape((batch, beams) + x.shape[1:]) if flat else x
        out = jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)
        return out.reshape((-1,) + out.shape[2:]) if flat else out
    return jax.tree_util.tree_map(gather, tree)


def _gather_cache(cache, indices, batch, beams):
    def go(path, x):
        name = getattr(path[-1], "key", None)
        return _gather_beams(x, indices, batch, beams) if name in BATCHED_CACHE else x
    return jax.tree_util.tree_map_with_path(go, cache)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam_size", "length_penalty"))
def _beam_search(model, params, src, src_segment_ids, *, max_len, beam_size, length_penalty):
    """Beam search with length penalty, EOS handling and early stopping (as in Flax's WMT example,
    with the cache built once per source and then tiled across beams)."""
    b, k = src.shape[0], beam_size
    logits, cache = _first_step(model, params, src, src_segment_ids)

    def tile(path, x):  # [B, ...] -> [B * K, ...] for batched cache entries
        name = getattr(path[-1], "key", None)
        return jnp.repeat(x, k, axis=0) if name in BATCHED_CACHE else x

    cache = jax.tree_util.tree_map_with_path(tile, cache)
    rep = lambda x: None if x is None else jnp.repeat(x, k, axis=0)  # noqa: E731
    src_k, seg_k = rep(src), rep(src_segment_ids)
    max_penalty = _length_penalty(max_len, length_penalty)

    def expand(i, seqs, alive_logp, logp_next):
        """Grow [B, K] beams by one token: returns the top 2K candidates."""
        vocab = logp_next.shape[-1]
        cand = (alive_logp[:, :, None] + logp_next.reshape(b, k, vocab)).reshape(b, k * vocab)
        top_logp, top_idx = jax.lax.top_k(cand, 2 * k)  # [B 2K]
        beam_idx, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        top_seqs = _gather_beams(seqs, beam_idx, b, k).at[:, :, i].set(token)  # [B 2K L]
        return top_seqs, top_logp, token, beam_idx

    def update(i, state, logp_next):
        seqs, alive_logp, fin_seqs, fin_scores, cache = state
        top_seqs, top_logp, token, beam_idx = expand(i, seqs, alive_logp, logp_next)
        is_eos = token == EOS_ID
        # alive: the best K candidates that did not just end
        alive_scores = jnp.where(is_eos, NEG_INF, top_logp)
        new_alive_logp, keep = jax.lax.top_k(alive_scores, k)
        new_seqs = jnp.take_along_axis(top_seqs, keep[..., None], axis=1)
        new_cache = _gather_cache(cache, jnp.take_along_axis(beam_idx, keep, axis=1), b, k)
        # finished: the best K among those already finished and those that just ended
        ended = jnp.where(is_eos, top_logp / _length_penalty(i + 1.0, length_penalty), NEG_INF)
        all_scores = jnp.concatenate([fin_scores, ended], axis=1)
        all_seqs = jnp.concatenate([fin_seqs, top_seqs], axis=1)
        fin_scores, pick = jax.lax.top_k(all_scores, k)
        fin_seqs = jnp.take_along_axis(all_seqs, pick[..., None], axis=1)
        return new_seqs, new_alive_logp, fin_seqs, fin_scores, new_cache

    seqs = jnp.zeros((b, k, max_len), jnp.int32)
    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (b, 1))  # one live beam at first
    fin_seqs, fin_scores = jnp.zeros((b, k, max_len), jnp.int32), jnp.full((b, k), NEG_INF)
    logp0 = jnp.repeat(jax.nn.log_softmax(logits), k, axis=0)
    state = update(0, (seqs, alive_logp, fin_seqs, fin_scores, cache), logp0)

    def cond(carry):
        i, (_, alive_logp, _, fin_scores, _) = carry
        best_possible = alive_logp[:, 0] / max_penalty
        worst_finished = jnp.min(fin_scores, axis=1)
        return (i < max_len) & jnp.any(best_possible > worst_finished)

    def body(carry):
        i, state = carry
        seqs, alive_logp, _, _, cache = state
        last = seqs[:, :, i - 1].reshape(-1)
        logits, cache = _next_step(model, params, cache, src_k, seg_k, last)
        return i + 1, update(i, state[:4] + (cache,), jax.nn.log_softmax(logits))

    _, (seqs, alive_logp, fin_seqs, fin_scores, _) = jax.lax.while_loop(cond, body, (jnp.array(1), state))
    # rows where nothing finished fall back to their live beams
    none_finished = jnp.all(fin_scores <= NEG_INF / 2, axis=1)
    best = jnp.where(none_finished[:, None], seqs[:, 0], fin_seqs[:, 0])
    # zero everything after the first EOS
    after_eos = jnp.cumsum(jnp.cumsum(best == EOS_ID, axis=1), axis=1) > 1
    return jnp.where(after_eos, 0, best)


def generate(model: Transformer, variables, src: Array, *, max_len: int, beam_size: int = 1,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng: Array | None = None,
             length_penalty: float = 0.6, src_segment_ids: Array | None = None) -> Array:
    """Translate src [B, S] into int32 tokens [B, max_len].

    beam_size 1 with temperature 0 is greedy; temperature > 0 samples (with optional top-k / top-p);
    beam_size > 1 runs beam search with GNMT length penalty `length_penalty`.
    """
    if max_len <= 0 or max_len > model.cfg.max_len:
        raise ValueError(f"generate: max_len must be in [1, cfg.max_len={model.cfg.max_len}]; got {max_len}")
    if beam_size < 1:
        raise ValueError(f"generate: beam_size must be >= 1; got {beam_size}")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: need temperature >= 0, top_k >= 0, 0 < top_p <= 1; "
                         f"got {temperature}, {top_k}, {top_p}")
    if beam_size > 1 and temperature > 0:
        raise ValueError("generate: beam search is deterministic; use temperature=0 with beam_size > 1")
    params = variables["params"]
    src = jnp.asarray(src, jnp.int32)
    if beam_size > 1:
        return _beam_search(model, params, src, src_segment_ids, max_len=max_len, beam_size=beam_size,
                            length_penalty=float(length_penalty))
    if temperature > 0 and rng is None:
        raise ValueError("generate: sampling (temperature > 0) needs rng")
    rng = jax.random.key(0) if rng is None else rng
    return _sample(model, params, src, src_segment_ids, rng, max_len=max_len,
                   temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))


def sequence_logprob(model: Transformer, variables, src: Array, tokens: Array) -> Array:
    """Sum of the model's log-probabilities of tokens [B, L] (up to and including EOS); [B]."""
    tgt_in = jnp.concatenate([jnp.full((tokens.shape[0], 1), BOS_ID, jnp.int32), tokens[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(model.apply(variables, src, tgt_in))
    tok_logp = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(tokens != 0, tok_logp, 0.0), axis=1)
