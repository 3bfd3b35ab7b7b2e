"""Speculative (assisted) greedy decoding: a small draft model proposes k tokens one at a time, the
target checks all of them in one cached pass of k + 1 positions, and every row keeps the longest
prefix the target agrees with plus the target's own next token (Leviathan et al. 2023; Chen et al.
2023). Greedy, so the output is the target's greedy output; each round costs k draft steps and one
target pass and gains 1 to k + 1 tokens per row.

Works for decoder-only models and for encoder-decoders (both encode the source once; the drafts
extend the decoder), with rows of different prompt lengths: each row advances by its own number of
accepted tokens, which the per-row cache indices allow. Rejected positions are rolled back by
setting the cache indices (stale slots beyond a row's index are never visible and are overwritten),
so the target's attention must keep every position (no `Windowed` ring, no `Performer` running
state); the draft may be any model with such caches too.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from transformer_jax.attention.base import RecurrentDecoding
from transformer_jax.decode.adapters import (_adapter, _check_prompt_lengths, _check_tokens, _default_config,
                                             _new_tokens, _positive_int, cache_bucket)
from transformer_jax.decode.config import GenerationConfig
from transformer_jax.decode.processors import after_eos, is_any, place

_INDICES = ("cache_index", "decode_index")


class SpeculativeStats(NamedTuple):
    """rounds: target passes made; accepted [B]: draft tokens the target kept, per row."""

    rounds: Array
    accepted: Array


def _set_index(cache, index: Array):
    """Every per-row cache index (attention's `cache_index`, the decoder's `decode_index`) := index [B]."""
    def go(path, x):
        name = getattr(path[-1], "key", None) if path else None
        return jnp.broadcast_to(index, x.shape).astype(x.dtype) if name in _INDICES else x
    return jax.tree_util.tree_map_with_path(go, cache)


def _check_rollback(model, role: str):
    specs = tuple(model.cfg.decoder_specs)
    bad = [s for s in specs if s.decode_window is not None or isinstance(s, RecurrentDecoding)]
    if bad:
        raise ValueError(f"speculative decoding: the {role} model's decoder attention {bad[0]!r} keeps a ring "
                         "buffer or a running state that cannot be rolled back past rejected drafts; use a model "
                         "whose decoder attention caches every position (Dense, Flash, BlockSparse)")


def speculative_greedy(target, draft, prompt: Array, lengths: Array, n: int, k: int,
                       config: GenerationConfig) -> tuple[Array, SpeculativeStats]:
    """The loop, on two `adapters.Prepared` models: prompt [B, P] -> ([B, P + N], stats)."""
    b, p = prompt.shape
    rows = jnp.arange(b)
    width = p + n + k + 1
    seq = place(prompt, lengths, jnp.full((b, width - p), config.pad_id, jnp.int32), config.pad_id)
    t_logits, t_cache = target.prefill(target.cache, prompt, lengths)
    _, d_cache = draft.prefill(draft.cache, prompt, lengths)
    first = jnp.argmax(t_logits, axis=-1).astype(jnp.int32)
    seq = seq.at[rows, lengths].set(first)
    cur = lengths + 1  # tokens in each row so far; the last one is not in either cache yet
    done = is_any(first, config.eos_ids) | (n <= 1)

    def cond(state):
        return jnp.any(~state[3])

    def body(state):
        seq, t_cache, d_cache, done, cur, rounds, accepted = state
        # the draft: re-feed the last two tokens (the older one may be missing after a full accept)
        d_cache = _set_index(d_cache, cur - 2)
        logits, d_cache = draft.chunk(d_cache, jnp.stack([seq[rows, cur - 2], seq[rows, cur - 1]], axis=1))
        proposals = [jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)]
        for _ in range(k - 1):
            logits, d_cache = draft.chunk(d_cache, proposals[-1][:, None])
            proposals.append(jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32))
        drafts = jnp.stack(proposals, axis=1)  # [B k]
        # the target: the last token and the k drafts in one pass of k + 1 positions
        t_cache = _set_index(t_cache, cur - 1)
        logits, t_cache = target.chunk(t_cache, jnp.concatenate([seq[rows, cur - 1][:, None], drafts], axis=1))
        greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B k+1]
        agree = jnp.cumprod((drafts == greedy[:, :k]).astype(jnp.int32), axis=1)
        m = jnp.sum(agree, axis=1)  # [B] accepted drafts
        new = jnp.where(jnp.arange(k + 1)[None, :] < m[:, None], jnp.pad(drafts, ((0, 0), (0, 1))),
                        greedy)  # drafts up to m, then the target's token (position m)
        keep = (jnp.arange(k + 1)[None, :] <= m[:, None]) & ~done[:, None]
        cols = jnp.minimum(cur[:, None] + jnp.arange(k + 1)[None, :], width - 1)
        seq = seq.at[rows[:, None], cols].set(jnp.where(keep, new, seq[rows[:, None], cols]))
        generated = cur + jnp.where(done, 0, m + 1) - lengths
        ended = jnp.any(keep & is_any(new, config.eos_ids), axis=1)
        accepted = accepted + jnp.where(done, 0, m)
        cur = jnp.where(done, cur, cur + m + 1)
        return seq, t_cache, d_cache, done | ended | (generated >= n), cur, rounds + 1, accepted

    state = (seq, t_cache, d_cache, done, cur, jnp.array(0), jnp.zeros((b,), jnp.int32))
    seq, _, _, _, _, rounds, accepted = jax.lax.while_loop(cond, body, state)
    new = seq[rows[:, None], lengths[:, None] + jnp.arange(n)[None, :]]  # [B N]
    new = jnp.where(after_eos(new, config.eos_ids), config.pad_id, new)
    return place(prompt, lengths, new, config.pad_id), SpeculativeStats(rounds, accepted)


@functools.partial(jax.jit, static_argnames=("model", "draft_model", "config", "n", "k"))
def _speculative(model, draft_model, config, variables, draft_variables, inputs, src_segment_ids, lengths, *,
                 n: int, k: int):
    adapter = _adapter(model)
    p = adapter.prompt_length(inputs)
    size = cache_bucket(p + n + k, max(model.cfg.max_len, p + n + k))
    target = adapter.prepare(model, variables, inputs, src_segment_ids, config, size)
    draft = _adapter(draft_model).prepare(draft_model, draft_variables, inputs, src_segment_ids, config, size)
    prompt = target.prompt
    lengths = jnp.full((prompt.shape[0],), prompt.shape[1], jnp.int32) if lengths is None else lengths
    out, stats = speculative_greedy(target, draft, prompt, lengths, n, k, config)
    return (out if adapter.keeps_prompt else out[:, prompt.shape[1]:]), stats


def speculative_generate(model, variables, draft_model, draft_variables, inputs: Array, *,
                         max_new_tokens: int | None = None, max_len: int | None = None, num_draft_tokens: int = 4,
                         prompt_lengths: Array | None = None, src_segment_ids: Array | None = None,
                         generation_config: GenerationConfig | None = None, return_stats: bool = False):
    """Greedy generation of `model` (the target) assisted by `draft_model` (same tokenizer and
    vocabulary, same kind: both decoder-only or both encoder-decoders): the same tokens as
    `generate(model, variables, inputs, ...)` greedy, in the same layout, in fewer target passes
    when the draft often agrees. `num_draft_tokens` k: drafts per round. `return_stats`: also a
    `SpeculativeStats` (target passes, accepted drafts per row)."""
    config = _default_config(model) if generation_config is None else generation_config
    adapter = _adapter(model)
    if _adapter(draft_model) is not adapter:
        raise ValueError(f"speculative_generate: the draft ({type(draft_model).__name__}) must be the same kind of "
                         f"model as the target ({type(model).__name__})")
    if draft_model.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"speculative_generate: the draft's vocab_size {draft_model.cfg.vocab_size} differs from the "
                         f"target's {model.cfg.vocab_size}; the draft must share the tokenizer")
    _check_rollback(model, "target")
    _check_rollback(draft_model, "draft")
    inputs = _check_tokens(inputs, model.cfg.vocab_size)
    k = _positive_int("num_draft_tokens", num_draft_tokens, allow_none=False)
    p = adapter.prompt_length(inputs)
    n = _new_tokens(_positive_int("max_len", max_len), _positive_int("max_new_tokens", max_new_tokens), config, p,
                    adapter.keeps_prompt)
    for m, role in ((model, "target"), (draft_model, "draft")):
        if p + n - 1 > m.cfg.max_len:
            raise ValueError(f"speculative_generate: a prompt of {p} plus {n} new tokens needs {p + n - 1} positions "
                             f"but the {role}'s cfg.max_len is {m.cfg.max_len}")
    if prompt_lengths is not None and not adapter.keeps_prompt:
        raise ValueError("speculative_generate: prompt_lengths is for decoder-only models")
    lengths = _check_prompt_lengths(prompt_lengths, inputs.shape[0], p)
    out, stats = _speculative(model, draft_model, config, variables, draft_variables, inputs, src_segment_ids,
                              lengths, n=n, k=k)
    return (out, stats) if return_stats else out
