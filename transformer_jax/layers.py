"""Building blocks: token embedding, positional encodings, feed-forward, norms.

Each layer takes the scalars it uses, never the whole config. Every parameter carries logical
axis names (`embed`, `vocab`, `mlp`, ...) so `transformer_jax.sharding` can place it by one rules
table. Alphabet: B batch, T length, D model dim, F mlp dim, V vocab, N heads, H head dim.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.config import GATED

Dtype = Any


def partitioned(init, *axes: str | None):
    """An initializer whose parameter is annotated with logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def check_token_range(tokens: Array, vocab_size: int, name: str = "tokens") -> None:
    """Raise if concrete token ids fall outside [0, vocab_size).

    Under jit the ids are not known while tracing; there an out-of-range id gathers NaN (jnp.take's
    "fill" mode), so its logits and the loss are NaN and the train step's non-finite guard stops the
    run, naming the step. It never silently reads another row.
    """
    if isinstance(tokens, jax.core.Tracer) or tokens.size == 0:
        return
    ids = np.asarray(tokens)  # concrete: numpy, so nothing is staged into an enclosing trace
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise ValueError(f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size}); "
                         f"check the tokenizer against vocab_size={vocab_size}")


class Embed(nn.Module):
    """Token embedding; `attend` reuses the table for tied output logits (Press & Wolf, 2017)."""

    vocab_size: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scale: bool = True  # multiply by sqrt(features), as in Vaswani et al. 2017, section 3.4

    def setup(self):
        init = nn.initializers.normal(stddev=self.features ** -0.5)
        self.embedding = self.param("embedding", partitioned(init, "vocab", "embed"),
                                    (self.vocab_size, self.features), self.param_dtype)

    def __call__(self, tokens: Array) -> Array:
        """[B, T] int -> [B, T, D] (times sqrt(D) when `scale`)."""
        check_token_range(tokens, self.vocab_size)
        # gather from a whole table (as FSDP gathers any weight before use), not a sharded one
        table = nn.with_logical_constraint(jnp.asarray(self.embedding, self.dtype), (None, None))
        x = jnp.take(table, tokens, axis=0, mode="fill", fill_value=jnp.nan)
        return x * jnp.asarray(math.sqrt(self.features), self.dtype) if self.scale else x

    def attend(self, x: Array) -> Array:
        """[B, T, D] -> [B, T, V] float32 logits, x @ E^T.

        With E ~ N(0, 1/D) and unit-scale x the logits start at unit scale (as in tensor2tensor);
        dividing by sqrt(D) as well would start them ~sqrt(D) times too small and slow training.
        """
        return jnp.einsum("btd,vd->btv", x, jnp.asarray(self.embedding, self.dtype),
                          preferred_element_type=jnp.float32)


def sinusoidal(positions: Array, features: int, dtype: Dtype = jnp.float32, paper: bool = False) -> Array:
    """Fixed sinusoidal encodings (Vaswani et al. 2017, section 3.5): [B, T] int -> [B, T, D].

    Sines in the first half, cosines in the second. Frequencies 10000^(-i / (D/2 - 1)) as in
    tensor2tensor, or with `paper` the paper's 10000^(-2i / D) (Marian's table).
    """
    half = features // 2
    denom = half if paper else max(half - 1, 1)
    inv = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / denom)
    angles = positions.astype(jnp.float32)[..., None] * inv  # [B T D/2]
    enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if features % 2:
        enc = jnp.pad(enc, ((0, 0), (0, 0), (0, 1)))
    return enc.astype(dtype)


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings for positions < max_len, at row position + offset
    (BART reserves the first `offset` = 2 rows)."""

    max_len: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    offset: int = 0

    @nn.compact
    def __call__(self, positions: Array) -> Array:
        table = self.param("pos_embedding", partitioned(nn.initializers.normal(0.02), None, "embed"),
                           (self.max_len + self.offset, self.features), self.param_dtype)
        return jnp.take(jnp.asarray(table, self.dtype), positions + self.offset, axis=0)  # [B T D]


def relative_position_bucket(relative: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
    """T5's bucket of each key - query offset (Raffel et al. 2020): exact for small offsets, then
    logarithmic up to max_distance; bidirectional buckets split by sign. int [...] -> int [...]."""
    bucket = jnp.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).astype(relative.dtype) * num_buckets
        distance = jnp.abs(relative)
    else:
        distance = -jnp.minimum(relative, 0)
    exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (num_buckets - exact)).astype(relative.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned scalar per head and relative-position bucket, added to the attention scores
    (T5). One per stack, shared by its layers."""

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q_positions: Array, kv_positions: Array) -> Array:
        """[B, T], [B, S] int positions -> float32 bias [B, N, T, S]."""
        table = self.param("embedding", partitioned(nn.initializers.normal(1.0), None, "heads"),
                           (self.num_buckets, self.num_heads), self.param_dtype)
        relative = kv_positions[:, None, :] - q_positions[:, :, None]  # [B T S]
        bucket = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        bias = jnp.take(jnp.asarray(table, jnp.float32), bucket, axis=0)  # [B T S N]
        return jnp.transpose(bias, (0, 3, 1, 2))


def apply_rotary(x: Array, positions: Array, base: float = 10_000.0) -> Array:
    """Rotary position embedding (Su et al. 2021) on [B, T, N, H] at integer positions [B, T].

    Rotates the two halves of each head (the GPT-NeoX layout), computed in float32.
    """
    half = x.shape[-1] // 2
    inv = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv  # [B T 1 H/2]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Projection(nn.Module):
    """x @ W + b over the trailing `in_dims` axes of x, into `features` (an int or a tuple).

    The kernel is created at its full shape ([*in, *features]) with logical names `axes`, so it
    can be sharded and constrained as is (flax's DenseGeneral flattens and re-boxes it, which
    breaks logical constraints once a mesh is in scope). Glorot-uniform over the real fans.
    """

    features: int | tuple[int, ...]
    axes: tuple[str | None, ...]
    in_dims: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out = self.features if isinstance(self.features, tuple) else (self.features,)
        in_shape = x.shape[x.ndim - self.in_dims:]
        n_in = len(in_shape)
        init = nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, n_in + len(out))))
        kernel = self.param("kernel", partitioned(init, *self.axes), in_shape + out, self.param_dtype)
        letters = "abcdefgh"
        ins, outs = letters[:n_in], letters[n_in:n_in + len(out)]
        y = jnp.einsum(f"...{ins},{ins}{outs}->...{outs}", x.astype(self.dtype),
                       jnp.asarray(kernel, self.dtype))
        if self.use_bias:
            bias = self.param("bias", partitioned(nn.initializers.zeros_init(), *self.axes[n_in:]),
                              out, self.param_dtype)
            y = y + jnp.asarray(bias, self.dtype)
        return y


def dense(features, axes: tuple[str | None, ...], dtype, param_dtype, name=None, use_bias=True,
          in_dims: int = 1) -> Projection:
    """A logically partitioned projection (see `Projection`)."""
    return Projection(features, axes, in_dims, use_bias, dtype, param_dtype, name=name)


_ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False),
                "gelu_tanh": lambda x: nn.gelu(x, approximate=True), "silu": nn.silu}


def activation_fn(name: str):
    """The elementwise function of an activation name (a gated name gives its gate's function)."""
    return _ACTIVATIONS[GATED.get(name, name)]


class MLP(nn.Module):
    """Position-wise feed-forward: ReLU (the paper), GELU, SiLU, or gated SwiGLU / GEGLU
    (Shazeer 2020), `wo(act(wi x) * wi_gate x)`."""

    d_ff: int
    activation: str = "relu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        proj = lambda features, axes, name: dense(features, axes, self.dtype, self.param_dtype, name,  # noqa: E731
                                                  self.use_bias)
        h = activation_fn(self.activation)(proj(self.d_ff, ("embed", "mlp"), "wi")(x))  # [B T F]
        if self.activation in GATED:
            h = h * proj(self.d_ff, ("embed", "mlp"), "wi_gate")(x)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return proj(d, ("mlp", "embed"), "wo")(h)  # [B T D]


class Dropout(nn.Module):
    """Inverted dropout from 8 random bits per element: each 32-bit random word masks four elements.

    `nn.Dropout` draws a 32-bit word per element (`jax.random.bernoulli`), and generating random
    words is the costly part on a CPU: for the base model's 33.6M dropped elements per step, a mask
    took 1.99 s with Bernoulli draws and 0.63 s from packed bytes (one busy core; benchmarks/
    peer_wmt.py times the whole step). The kept share is `keep / 256` with keep = round(256 (1 - rate)),
    so the rate is rounded to a multiple of 1/256 (0.1 -> 0.1016); kept values are scaled by 256 / keep,
    so the expectation is unchanged. A last axis not divisible by 4 draws a byte per word instead.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        keep = round(256 * (1.0 - self.rate))
        if deterministic or keep >= 256:
            return x
        if keep == 0:
            return jnp.zeros_like(x)
        rng = self.make_rng("dropout")
        *lead, d = x.shape
        if d % 4 == 0:  # [..., D/4] words -> [..., D/4, 4] bytes -> [..., D]; the last axis is not sharded
            words = jax.random.bits(rng, (*lead, d // 4), jnp.uint32)
            draws = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(x.shape)
        else:
            draws = jax.random.bits(rng, x.shape, jnp.uint8)
        return jnp.where(draws < keep, x * (256.0 / keep), 0.0).astype(x.dtype)


class OffsetRMSNorm(nn.Module):
    """RMSNorm that multiplies by (offset + scale): Gemma's `x / rms(x) * (1 + w)` with offset 1.

    Computed in float32 and cast back, as the reference does; `scale` starts at 1 - offset, so a
    fresh norm multiplies by 1. [..., F] -> [..., F], normalised over the last axis.
    """

    epsilon: float
    offset: float
    axis_name: str = "embed"  # the logical name of the normalised axis
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = partitioned(nn.initializers.constant(1.0 - self.offset), self.axis_name)
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (y * (self.offset + jnp.asarray(scale, jnp.float32))).astype(self.dtype)


def norm(kind: str, dtype, param_dtype, name: str, eps: float = 1e-6, offset: float = 0.0,
         axis_name: str = "embed") -> nn.Module:
    """LayerNorm (Ba et al. 2016) or RMSNorm (Zhang & Sennrich 2019), statistics in float32.

    `offset` (RMSNorm only): multiply by (offset + scale) instead of scale (Gemma: 1.0)."""
    if kind == "rmsnorm" and offset:
        return OffsetRMSNorm(eps, offset, axis_name, dtype, param_dtype, name=name)
    scale = partitioned(nn.initializers.ones_init(), axis_name)
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale, name=name)
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale,
                        bias_init=partitioned(nn.initializers.zeros_init(), axis_name), name=name)


def positions_from_segments(segment_ids: Array) -> Array:
    """Positions restarting at 0 for every packed segment: [B, T] -> [B, T] int32."""
    idx = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)[None, :]
    start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                             segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(start, idx, 0), axis=1)
    return idx - first
