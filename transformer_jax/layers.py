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
from jax import Array

Dtype = Any


def partitioned(init, *axes: str | None):
    """An initializer whose parameter is annotated with logical axis names."""
    return nn.with_logical_partitioning(init, axes)


class Embed(nn.Module):
    """Token embedding; `attend` reuses the table for tied output logits (Press & Wolf, 2017)."""

    vocab_size: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        init = nn.initializers.normal(stddev=self.features ** -0.5)
        self.embedding = self.param("embedding", partitioned(init, "vocab", "embed"),
                                    (self.vocab_size, self.features), self.param_dtype)

    def __call__(self, tokens: Array) -> Array:
        """[B, T] int -> [B, T, D], scaled by sqrt(D) as in Vaswani et al. 2017, section 3.4."""
        # gather from a whole table (as FSDP gathers any weight before use), not a sharded one
        table = nn.with_logical_constraint(jnp.asarray(self.embedding, self.dtype), (None, None))
        x = jnp.take(table, tokens, axis=0)
        return x * jnp.asarray(math.sqrt(self.features), self.dtype)

    def attend(self, x: Array) -> Array:
        """[B, T, D] -> [B, T, V] float32 logits, x @ E^T.

        With E ~ N(0, 1/D) and unit-scale x the logits start at unit scale (as in tensor2tensor);
        dividing by sqrt(D) as well would start them ~sqrt(D) times too small and slow training.
        """
        return jnp.einsum("btd,vd->btv", x, jnp.asarray(self.embedding, self.dtype),
                          preferred_element_type=jnp.float32)


def sinusoidal(positions: Array, features: int, dtype: Dtype = jnp.float32) -> Array:
    """Fixed sinusoidal encodings (Vaswani et al. 2017, section 3.5): [B, T] int -> [B, T, D]."""
    half = features // 2
    inv = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    angles = positions.astype(jnp.float32)[..., None] * inv  # [B T D/2]
    enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if features % 2:
        enc = jnp.pad(enc, ((0, 0), (0, 0), (0, 1)))
    return enc.astype(dtype)


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings for positions < max_len."""

    max_len: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, positions: Array) -> Array:
        table = self.param("pos_embedding", partitioned(nn.initializers.normal(0.02), None, "embed"),
                           (self.max_len, self.features), self.param_dtype)
        return jnp.take(jnp.asarray(table, self.dtype), positions, axis=0)  # [B T D]


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


class MLP(nn.Module):
    """Position-wise feed-forward: ReLU (the paper), GELU, or gated SwiGLU / GEGLU (Shazeer, 2020)."""

    d_ff: int
    activation: str = "relu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        act = {"relu": nn.relu, "gelu": nn.gelu, "swiglu": nn.silu, "geglu": nn.gelu}[self.activation]
        h = act(dense(self.d_ff, ("embed", "mlp"), self.dtype, self.param_dtype, "wi")(x))  # [B T F]
        if self.activation in ("swiglu", "geglu"):
            h = h * dense(self.d_ff, ("embed", "mlp"), self.dtype, self.param_dtype, "wi_gate")(x)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return dense(d, ("mlp", "embed"), self.dtype, self.param_dtype, "wo")(h)  # [B T D]


def norm(kind: str, dtype, param_dtype, name: str) -> nn.Module:
    """LayerNorm (Ba et al. 2016) or RMSNorm (Zhang & Sennrich 2019), statistics in float32."""
    scale = partitioned(nn.initializers.ones_init(), "embed")
    if kind == "rmsnorm":
        return nn.RMSNorm(dtype=dtype, param_dtype=param_dtype, scale_init=scale, name=name)
    return nn.LayerNorm(dtype=dtype, param_dtype=param_dtype, scale_init=scale,
                        bias_init=partitioned(nn.initializers.zeros_init(), "embed"), name=name)


def positions_from_segments(segment_ids: Array) -> Array:
    """Positions restarting at 0 for every packed segment: [B, T] -> [B, T] int32."""
    idx = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)[None, :]
    start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                             segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(start, idx, 0), axis=1)
    return idx - first
