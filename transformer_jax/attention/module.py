"""MultiHeadAttention: projections around a pluggable attention spec, for self- and cross-attention.

With `decode=True` the module keeps a decode cache in the `cache` collection, and each call takes
T >= 1 new positions per row (a whole prompt in one parallel pass, then one token at a time, or a
chunk of draft tokens); every row has its own index, and right padding marked by the query segment
ids does not advance it, so rows of different lengths continue from their own ends:
- self-attention stores each step's key and value; a spec with a `decode_window` (`Windowed`) keeps
  only the last `window + 1` positions in a ring buffer, any other spec keeps `cache_len` positions
  and reads the visible ones off the spec's own static pattern (`spec.mask`), so decoding matches
  the full pass; a `RecurrentDecoding` spec (`Performer`) keeps its own fixed-size running state;
- cross-attention projects the encoder output once, on the first step, and reuses it afterwards.
With grouped-query attention (`num_kv_heads` < `num_heads`, Ainslie et al. 2023) keys and values
have `num_kv_heads` heads, and so does the cache; each is shared by num_heads / num_kv_heads
query heads. A step past a full (non-windowed) cache returns NaN, never a clamped slot.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.attention import SPECS, weights
from transformer_jax.attention.base import RecurrentDecoding
from transformer_jax.attention.base import einsum_f32
from transformer_jax.attention.dense import Dense
from transformer_jax.layers import apply_rotary, dense, norm

Dtype = Any
# The running-state entries of the registered recurrent specs (all batched), with their fresh values.
_RECURRENT = {name: value for cls in SPECS for name, value in getattr(cls, "decode_fresh", {}).items()}
# Cache entries with a leading batch axis; beam search reorders these and nothing else.
BATCHED_CACHE = ("cached_key", "cached_value", "cached_pos", "cache_index", "cross_key", "cross_value") + tuple(_RECURRENT)
PREFILL = "prefill"  # `decode=PREFILL`: a cached step on an empty cache (see MultiHeadAttention)
# The value of each self-attention cache entry before the first step (`decode.init_cache`).
FRESH_CACHE = {"cached_key": 0, "cached_value": 0, "cached_pos": -1, "cache_index": 0, **_RECURRENT}
# The axis of the cached positions in each cache entry that holds one per position (counted with the
# batch axis; a scanned stack adds its layer axis in front). Keys are stored [B, K, L, H] and values
# [B, K, H, L]: each is then the row-major matrix of the decode attention's batched matrix-vector
# products (scores = keys . q over H, out = values . p over L), read in place, where a
# [B, L, K, H] cache is transposed (copied whole) by every layer at every step.
CACHE_SLOT_AXIS = {"cached_key": 2, "cached_value": 3, "cached_pos": 1}


def _as_cached_keys(k: Array) -> Array:
    """[B, S, K, H] -> [B, K, S, H], the layout of the key caches."""
    return jnp.swapaxes(k, 1, 2)


def _as_cached_values(v: Array) -> Array:
    """[B, S, K, H] -> [B, K, H, S], the layout of the value caches."""
    return jnp.transpose(v, (0, 2, 3, 1))


def _after(index: Array, result: Array) -> Array:
    """`index`, made to depend on `result` (min(argmax, 0) is 0 for any values, NaN included), so
    that XLA orders the reads that produced `result` before a write at `index` and writes the cache
    in place. With no data dependency between the two, it copies the cache, whole, twice per layer
    per step to keep the reads safe."""
    return index + jnp.minimum(jnp.argmax(result.reshape(-1)[:result.shape[-1]]), 0).astype(index.dtype)


def _write_positions(cache: Array, new: Array, qpos: Array, axis: int) -> Array:
    """`cache` with row b's positions qpos[b] [B, T] (along `axis`) set to `new`, laid out as the
    cache with T positions; positions past the end are dropped, except for one row's one position
    (a plain decode step at batch 1), which lands in the last slot: XLA turns a one-row scatter into
    a select over the whole cache, a copy of it per layer per step, where `dynamic_update_slice`
    writes in place. That slot is harmless: a position past the end has its output poisoned
    (`_cached_step`), and so has every later one, and a slot is never visible before it is written
    again at its own position (speculative decoding rolls back to a smaller index)."""
    b, t = qpos.shape
    new = new.astype(cache.dtype)
    if b == t == 1:
        at = jnp.minimum(qpos[0, 0], cache.shape[axis] - 1)
        return jax.lax.dynamic_update_slice_in_dim(cache, new, at, axis)
    # (rows, :, ..., qpos) takes [B, T, ...the other axes] (numpy's advanced indexing)
    index = (jnp.arange(b)[:, None],) + (slice(None),) * (axis - 1) + (qpos,)
    return cache.at[index].set(jnp.moveaxis(new, axis, 1), mode="drop")


class MultiHeadAttention(nn.Module):
    """Projections around an attention spec: x [B, T, D] -> [B, T, D].

    Usable alone: `MultiHeadAttention(num_heads=8, head_dim=64)(x)` is bidirectional dense
    self-attention with no padding.
    """

    num_heads: int
    head_dim: int
    spec: Any = Dense()
    causal: bool = False
    cross: bool = False  # cross-attention: kv comes from the encoder (may be None after the first decode step)
    rotary_base: float | None = None  # rotary positions on q and k when set (self-attention only)
    cache_len: int = 0  # positions a decode cache can hold
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    num_kv_heads: int | None = None  # grouped-query attention; default num_heads
    use_bias: bool = True
    scale: float | None = None  # scores = scale * q.k; default 1 / sqrt(head_dim)
    qk_norm: bool = False  # RMSNorm over each head of q and k before rotary (Qwen3, Gemma 3)
    norm_eps: float = 1e-6  # the q/k norms' epsilon
    norm_offset: float = 0.0  # the q/k norms multiply by (offset + scale) (Gemma: 1.0)

    def _proj(self, name: str, heads: int):
        """x [B, S, D] -> [B, S, heads, H], then the per-head RMSNorm `<name>_norm` with `qk_norm`
        (query and key only)."""
        proj = dense((heads, self.head_dim), ("embed", "heads", "kv"), self.dtype, self.param_dtype, name,
                     self.use_bias)
        if not self.qk_norm or name == "value":
            return proj
        qk = norm("rmsnorm", self.dtype, self.param_dtype, f"{name}_norm", self.norm_eps, self.norm_offset, "kv")
        return lambda x: qk(proj(x))

    @nn.compact
    def __call__(self, x: Array, kv: Array | None = None, *, q_segment_ids=None, kv_segment_ids=None,
                 q_positions=None, kv_positions=None, bias: Array | None = None,
                 decode: bool | str = False) -> Array:
        """x [B, T, D] attends to itself, or (cross) to kv [B, S, D] -> [B, T, D].

        `decode=True` runs a cached step; `decode="prefill"` one on an empty cache (the first call
        of a generation), whose queries then attend to the new positions only.

        `bias` [B or 1, N, T, S] is added to the scores (T5's relative positions; Dense specs and
        cached decoding only). While decoding, its last axis spans the cache.
        """
        is_self = not self.cross
        kv_heads = self.num_kv_heads or self.num_heads
        q = self._proj("query", self.num_heads)(x)  # [B T N H]
        if self.scale is not None:  # the specs divide by sqrt(H); fold the requested scale into q
            q = q * jnp.asarray(self.scale * np.sqrt(self.head_dim), q.dtype)
        if is_self or not decode:
            src = x if is_self else kv
            k, v = self._proj("key", kv_heads)(src), self._proj("value", kv_heads)(src)  # [B S K H]
        else:  # cross-attention while decoding: project the encoder output once
            key_proj, value_proj = self._proj("key", kv_heads), self._proj("value", kv_heads)
            k = self.variable("cache", "cross_key", lambda: _as_cached_keys(key_proj(kv))).value  # [B K S H]
            v = self.variable("cache", "cross_value", lambda: _as_cached_values(value_proj(kv))).value
        if self.rotary_base is not None and is_self:
            if q_positions is None:
                q_positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
            q = apply_rotary(q, q_positions, self.rotary_base)
            k = apply_rotary(k, q_positions if kv_positions is None else kv_positions, self.rotary_base)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))

        # while decoding, row b's first `valid[b]` positions are real (right padding after them)
        valid = (jnp.full(x.shape[:1], x.shape[1], jnp.int32) if q_segment_ids is None
                 else jnp.sum(q_segment_ids != 0, axis=1).astype(jnp.int32))
        if decode and is_self and isinstance(self.spec, RecurrentDecoding):
            if bias is not None:
                raise ValueError(f"MultiHeadAttention: {self.spec!r} decodes from a running state and "
                                 "cannot add a score bias")
            out = self._recurrent_step(q, k, v, valid)
        elif decode and is_self:
            out = self._cached_step(q, k, v, bias, valid, empty=decode == PREFILL)
        elif decode:  # cross-attention over the cached encoder keys
            mask = (jnp.ones((k.shape[0], k.shape[2]), bool) if kv_segment_ids is None else kv_segment_ids != 0)
            visible = jnp.broadcast_to(mask[:, None, :], (q.shape[0], q.shape[1], k.shape[2]))
            out = grouped_attention(q, [(k, v, visible, bias)])
        else:
            k, v = self._repeat_kv(k), self._repeat_kv(v)  # [B S N H]
            extra = {} if bias is None else {"bias": bias}
            if weights.requested(self):  # only tj.attention_weights() asks
                self.sow(weights.COLLECTION, "weights", weights.probabilities(
                    self.spec, q, k, causal=self.causal, q_segment_ids=q_segment_ids,
                    kv_segment_ids=kv_segment_ids, bias=bias))  # [B N T S]
            out = self.spec(q, k, v, causal=self.causal, q_segment_ids=q_segment_ids,
                            kv_segment_ids=kv_segment_ids, **extra)  # [B T N H]
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        return dense(x.shape[-1], ("heads", "kv", "embed"), self.dtype, self.param_dtype, "out",
                     self.use_bias, in_dims=2)(out)  # [B T D]

    def _repeat_kv(self, x: Array) -> Array:
        """[B, S, K, H] -> [B, S, N, H]: each key/value head serves N / K query heads."""
        group = self.num_heads // x.shape[2]
        x = x if group == 1 else jnp.repeat(x, group, axis=2)
        return nn.with_logical_constraint(x, ("batch", "length", "heads", "kv"))

    def _recurrent_step(self, q: Array, k: Array, v: Array, valid: Array) -> Array:
        """Decoding from the spec's running state: q [B, T, N, H], k, v [B, T, K, H] at the next T
        positions -> [B, T, N, H]; row b's state takes its first valid[b] keys (the rest are padding).
        A prompt of T > 1 scans the spec's one-position step over the chunk inside this layer."""
        init = self.spec.decode_state(q.shape[0], self.num_heads, self.head_dim)
        state = {name: self.variable("cache", name, lambda a=a: a) for name, a in init.items()}
        k, v = self._repeat_kv(k), self._repeat_kv(v)

        def one(carry, xs):
            t, qt, kt, vt = xs  # qt [B N H]
            out, new = self.spec.decode_step(carry, qt[:, None], kt[:, None], vt[:, None])
            keep = (t < valid)  # [B]
            new = {name: jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, carry[name])
                   for name, x in new.items()}
            return new, out[:, 0]

        xs = (jnp.arange(q.shape[1]),) + tuple(jnp.moveaxis(a, 1, 0) for a in (q, k, v))
        final, outs = jax.lax.scan(one, {name: var.value for name, var in state.items()}, xs)
        for name, var in state.items():
            var.value = final[name]
        return jnp.moveaxis(outs, 0, 1)  # [B T N H]

    def _cache_length(self, name: str, fallback: int) -> int:
        """Positions the cache holds: its own shape once it exists (`decode.init_cache` may size it
        to the work), else `fallback`."""
        if self.has_variable("cache", name):
            return self.get_variable("cache", name).shape[CACHE_SLOT_AXIS[name]]
        return fallback

    def _cached_step(self, q: Array, k: Array, v: Array, bias: Array | None, valid: Array,
                     empty: bool = False) -> Array:
        """Decoding T >= 1 positions per row (a prompt prefill, a single step, or a chunk of draft
        tokens): q [B, T, N, H], k, v [B, T, K, H] at positions index[b] + t -> [B, T, N, H].

        Row b's first valid[b] positions are real; the rest are right padding whose outputs are
        garbage and which later steps overwrite (a dense cache) or never write (the ring buffer).
        The row's index then moves on by valid[b], so rows of different prompt lengths continue
        from their own ends.

        The queries attend to the cache as it was (slots before index[b]) and to the new positions,
        in one softmax; the new keys and values are written after, so that the cache has no reader
        but its write, which XLA then does in place (written first, each layer's cache would be
        copied whole at every step). `empty`: the cache holds nothing yet (a prefill), so the
        queries attend to the new positions only.
        """
        window = self.spec.decode_window
        fallback = self.cache_len if window is None else min(window + 1, self.cache_len)
        length = self._cache_length("cached_key", fallback)
        if length <= 0:
            raise ValueError("MultiHeadAttention.cache_len must be positive to decode")
        b, t = q.shape[:2]
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((b,), jnp.int32))
        i = index.value  # [B] next position of each row
        qpos = i[:, None] + jnp.arange(t, dtype=jnp.int32)  # [B T]
        kv_heads, h = k.shape[2:]
        ck = self.variable("cache", "cached_key", jnp.zeros, (b, kv_heads, length, h), k.dtype)  # [B K L H]
        cv = self.variable("cache", "cached_value", jnp.zeros, (b, kv_heads, h, length), v.dtype)  # [B K H L]
        index.value = i + valid
        k, v = _as_cached_keys(k.astype(ck.value.dtype)), _as_cached_values(v.astype(cv.value.dtype))
        if window is not None:
            return self._ring_step(q, k, v, bias, ck, cv, i, qpos, valid, length, window, empty)
        slots = jnp.arange(length, dtype=jnp.int32)
        old = slots[None, None, :] < i[:, None, None]  # [B T L] the slots written before this call
        new = jnp.arange(t)[None, :, None] >= jnp.arange(t)[None, None, :]  # [1 T T] causal among the new
        pattern = _causal_pattern(self.spec, self.cache_len)
        if pattern is not None:  # the rows of the spec's own causal pattern (sized as before)
            rows = jnp.asarray(pattern)[jnp.minimum(qpos, self.cache_len - 1)]  # [B T cache_len]
            old = old & rows[..., :length]
            new = new & jnp.take_along_axis(rows, jnp.minimum(qpos, self.cache_len - 1)[:, None, :], axis=-1)
        old_bias = new_bias = None
        if bias is not None:  # the caller's bias spans cfg.max_len slots; a longer cache gets zeros past them
            width = bias.shape[-1]
            old_bias = jnp.pad(bias[..., :length], [(0, 0)] * (bias.ndim - 1) + [(0, max(0, length - width))])
            rows_bias = jnp.broadcast_to(bias, (b,) + bias.shape[1:])  # [B N T S]
            cols = jnp.broadcast_to(jnp.minimum(qpos, width - 1)[:, None, None, :], (b,) + bias.shape[1:3] + (t,))
            new_bias = jnp.where(qpos[:, None, None, :] < width, jnp.take_along_axis(rows_bias, cols, axis=-1), 0.0)
        old, new = jnp.broadcast_to(old, (b, t, length)), jnp.broadcast_to(new, (b, t, t))
        blocks = [] if empty else [(ck.value, cv.value, old, old_bias)]
        out = grouped_attention(q, blocks + [(k, v, new, new_bias)])
        at = _after(qpos, out)
        ck.value = _write_positions(ck.value, k, at, CACHE_SLOT_AXIS["cached_key"])
        cv.value = _write_positions(cv.value, v, at, CACHE_SLOT_AXIS["cached_value"])
        # past a full cache there is no slot left: poison the real positions, never clamp
        real = jnp.arange(t)[None, :] < valid[:, None]
        return jnp.where(((qpos < length) | ~real)[:, :, None, None], out, jnp.nan)

    def _ring_step(self, q, k, v, bias, ck, cv, i, qpos, valid, length: int, window: int,
                   empty: bool = False) -> Array:
        """The windowed cache: a ring of the last `length` (= window + 1) positions, slot p % length."""
        if bias is not None:
            raise ValueError(f"MultiHeadAttention: {self.spec!r} decodes from a ring buffer and cannot "
                             "add a score bias")
        b, t = q.shape[:2]
        cpos = self.variable("cache", "cached_pos", lambda: jnp.full((b, length), -1, jnp.int32))
        gap = qpos[:, :, None] - cpos.value[:, None, :]  # [B T L]
        old = (cpos.value[:, None, :] >= 0) & (gap >= 0) & (gap <= window)
        gap_new = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]  # [T T] among the new positions
        new = ((gap_new >= 0) & (gap_new <= window))[None]
        blocks = [] if empty else [(ck.value, cv.value, old, None)]
        out = grouped_attention(q, blocks + [(k, v, jnp.broadcast_to(new, (b, t, t)), None)])
        # slot s now holds the last position p < i + valid with p % length == s
        end = (i + valid)[:, None]  # [B 1]
        p = end - 1 - jnp.mod(end - 1 - jnp.arange(length)[None, :], length)  # [B L]
        fresh = p >= i[:, None]
        pick = jnp.clip(p - i[:, None], 0, t - 1)

        def update(cache, new, axis):  # slots holding a fresh position take it from new
            shape = [b, 1, 1, 1]
            shape[axis] = length
            return jnp.where(fresh.reshape(shape), jnp.take_along_axis(new, pick.reshape(shape), axis), cache)

        ck.value = update(ck.value, k, CACHE_SLOT_AXIS["cached_key"])
        cv.value = update(cv.value, v, CACHE_SLOT_AXIS["cached_value"])
        cpos.value = jnp.where(fresh, p, cpos.value)
        return out


@functools.lru_cache(maxsize=64)
def _causal_pattern(spec, n: int) -> np.ndarray | None:
    """The spec's causal pattern at n positions, or None where it is the plain causal triangle
    (Dense, Flash): then `slot <= position` says it all and no [n, n] constant is built."""
    pattern = np.asarray(spec.mask(n, n, True), bool)
    return None if np.array_equal(pattern, np.tril(np.ones((n, n), bool))) else pattern


def grouped_attention(q: Array, blocks: list[tuple[Array, Array, Array, Array | None]]) -> Array:
    """Softmax attention of q [B, T, N, H] over blocks of keys and values, one softmax over all:
    each block is (keys [B, K, S, H], values [B, K, H, S] (as the decode caches hold them),
    visible [B, T, S], bias [B|1, N, T, S] or None added to the scores) -> [B, T, N, H].

    The decode path: a cache and the positions being added are two blocks, attended to without
    joining them. K divides N: grouped-query heads share a key/value head (Ainslie et al. 2023),
    whose keys are read once per group instead of repeated to N heads. Scores and softmax in
    float32 (as `masked_softmax_attention`); a query that sees no key gives zeros.
    """
    b, t, n, h = q.shape
    kv = blocks[0][0].shape[1]
    q = (q * jnp.asarray(1.0 / np.sqrt(h), q.dtype)).reshape(b, t, kv, n // kv, h)
    scores = []
    for k, _, visible, bias in blocks:
        s = einsum_f32("btkgh,bksh->bkgts", q, k)  # [B K G T S]
        if bias is not None:
            s = s + bias.astype(jnp.float32).reshape(bias.shape[0], kv, n // kv, *bias.shape[2:])
        scores.append(jnp.where(visible[:, None, None], s, jnp.finfo(jnp.float32).min))
    p = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    out, start = 0, 0
    for _, v, _, _ in blocks:
        width = v.shape[-1]
        out = out + jnp.einsum("bkgts,bkhs->btkgh", p[..., start:start + width].astype(v.dtype), v)
        start += width
    seen = jnp.any(jnp.concatenate([visible for _, _, visible, _ in blocks], axis=-1), axis=-1)
    return jnp.where(seen[:, :, None, None], out.reshape(b, t, n, h), jnp.zeros((), out.dtype))


def keys_per_query(spec, n: int, causal: bool) -> float:
    """Average number of keys a query pays for under `spec` at length n (`spec.keys_per_query`)."""
    return spec.keys_per_query(n, causal)
