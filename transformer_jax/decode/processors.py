"""Logit processors of the reference library's `generate`, on [B, V] scores with the history of
each row: repetition penalty, no-repeat n-grams, a minimum of new tokens, forced BOS/EOS.

Each takes `history` int32 [B, W] (each row's prompt then its generated tokens, padding after) and
`cur` int32 [B], the number of valid history tokens (the column being chosen), so rows of different
prompt lengths are served by one program. Applied to the raw logits in the reference library's
order (repetition penalty, n-grams, minimum length, forced tokens), before temperature and top-k/p.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import Array

from transformer_jax.decode.config import GenerationConfig, _ids

NEG_INF = -1.0e9


def is_any(tokens: Array, ids: tuple[int, ...]) -> Array:
    """tokens == any of ids (static), elementwise bool."""
    return functools.reduce(jnp.logical_or, [tokens == i for i in ids], jnp.zeros(tokens.shape, bool))


@dataclasses.dataclass(frozen=True)
class Processing:
    """The logit settings of one generation (static: part of the compiled program).

    repetition_penalty: CTRL's penalty (Keskar et al. 2019) on every token already in the row
      (prompt included): positive logits divided by it, negative ones multiplied; 1.0 is off.
    no_repeat_ngram_size: n > 0 bans any token that would repeat an n-gram already in the row.
    min_new_tokens: EOS is banned until this many tokens have been generated.
    """

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0

    def __post_init__(self):
        rp = self.repetition_penalty
        if isinstance(rp, bool) or not isinstance(rp, (int, float)) or not math.isfinite(rp) or rp <= 0:
            raise ValueError(f"generate: repetition_penalty must be a finite number > 0 (1.0 is off); got {rp!r}")
        for name in ("no_repeat_ngram_size", "min_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"generate: {name} must be an int >= 0 (0 is off); got {value!r}")

    @property
    def active(self) -> bool:
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0 or self.min_new_tokens > 0


def repetition_penalty(logits: Array, history: Array, cur: Array, penalty: float, start: Array) -> Array:
    """Penalise every token of history[b, start[b]:cur[b]] once (HF `RepetitionPenaltyLogitsProcessor`)."""
    b, w = history.shape
    cols = jnp.arange(w)[None, :]
    valid = (cols >= start[:, None]) & (cols < cur[:, None])
    seen = jnp.zeros(logits.shape, bool).at[jnp.arange(b)[:, None], history].max(valid)
    return jnp.where(seen, jnp.where(logits < 0, logits * penalty, logits / penalty), logits)


def banned_ngrams(history: Array, cur: Array, n: int, vocab: int) -> Array:
    """bool [B, V]: tokens that would complete an n-gram already in history[b, :cur[b]] (HF
    `NoRepeatNGramLogitsProcessor`: the last n - 1 tokens are compared with every earlier window)."""
    b, w = history.shape
    if w < n:
        return jnp.zeros((b, vocab), bool)
    rows = jnp.arange(b)[:, None]
    starts = jnp.arange(w - n + 1)  # [J] window starts
    last = jnp.take_along_axis(history, jnp.clip(cur[:, None] - (n - 1) + jnp.arange(n - 1)[None, :], 0, w - 1),
                               axis=1)  # [B n-1] the current (n-1)-gram
    windows = history[:, starts[:, None] + jnp.arange(n - 1)[None, :]]  # [B J n-1]
    match = jnp.all(windows == last[:, None, :], axis=-1)  # [B J]
    match = match & (starts[None, :] + n - 1 < cur[:, None]) & (cur[:, None] >= n - 1)
    follower = history[:, starts + n - 1]  # [B J]
    return jnp.zeros((b, vocab), bool).at[rows, follower].max(match)


def force(logits: Array, new_index: Array, n: int, config: GenerationConfig) -> Array:
    """HF's forced BOS/EOS processors on [B, V] scores: at the forced position the allowed ids score
    0 and all others NEG_INF. new_index: the generated-token index being chosen (scalar or [B])."""
    vocab = jnp.arange(logits.shape[-1])
    for ids, at in ((config.forced_bos_id, 0), (config.forced_eos_id, n - 1)):  # HF order: EOS wins
        if ids is not None:
            forced = jnp.where(is_any(vocab, _ids(ids)), 0.0, NEG_INF)  # [V]
            logits = jnp.where(jnp.reshape(new_index == at, (-1, 1)), forced, logits)
    return logits


def process(logits: Array, history: Array, cur: Array, new_index: Array, n: int, config: GenerationConfig,
            processing: Processing, start: Array | None = None) -> Array:
    """All processors in the reference library's order on logits [B, V] (float32).

    history [B, W], cur [B] as above; new_index: the generated-token index being chosen ([B] or a
    scalar); start [B]: the first history column the repetition penalty counts (default 0).
    """
    if processing.repetition_penalty != 1.0:
        first = jnp.zeros_like(cur) if start is None else start
        logits = repetition_penalty(logits, history, cur, processing.repetition_penalty, first)
    if processing.no_repeat_ngram_size > 0:
        banned = banned_ngrams(history, cur, processing.no_repeat_ngram_size, logits.shape[-1])
        logits = jnp.where(banned, -jnp.inf, logits)
    if processing.min_new_tokens > 0 and config.eos_ids:
        early = jnp.reshape(new_index < processing.min_new_tokens, (-1, 1))
        logits = jnp.where(early & is_any(jnp.arange(logits.shape[-1]), config.eos_ids)[None, :], -jnp.inf, logits)
    return force(logits, new_index, n, config)


def place(prompt: Array, lengths: Array, new: Array, pad_id: int) -> Array:
    """Each row's prompt[:lengths[b]], then its new tokens [B, N], then pad_id: [B, P + N]."""
    b, p = prompt.shape
    n = new.shape[1]
    cols = jnp.arange(p + n)[None, :]
    out = jnp.where(cols < lengths[:, None], jnp.pad(prompt, ((0, 0), (0, n))), pad_id)
    return out.at[jnp.arange(b)[:, None], lengths[:, None] + jnp.arange(n)[None, :]].set(new)


def after_eos(tokens: Array, eos_ids: tuple[int, ...]) -> Array:
    """bool [B, N]: positions after each row's first EOS."""
    is_eos = is_any(tokens, eos_ids)
    return (jnp.cumsum(is_eos, axis=1) - is_eos) > 0


def new_lengths(tokens: Array, eos_ids: tuple[int, ...]) -> Array:
    """[B]: generated tokens per row, up to and including the first EOS."""
    return jnp.sum(~after_eos(tokens, eos_ids), axis=1).astype(jnp.int32)


__all__ = ["NEG_INF", "Processing", "after_eos", "banned_ngrams", "force", "is_any", "new_lengths", "place",
           "process", "repetition_penalty"]
