"""Tensor tables: how each Hugging Face tensor maps onto this library's parameter tree.

A `Tensor` row names one checkpoint tensor, the parameter path(s) it fills, and a pair of pure
layout functions (`load`: checkpoint -> ours, `save`: ours -> checkpoint). The functions use only
array methods, slicing and `xp.concatenate`, so they run on numpy arrays while loading and under
`jax.eval_shape` when the expected checkpoint shapes are computed for error messages.

Layouts: a torch `nn.Linear` weight is [out, in]; ours is [in, out] (attention: [D, N, H] and
[N, H, D]). GPT-2's `Conv1D` is already [in, out] and fuses q, k, v into one [D, 3 * N * H].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str  # the checkpoint's name
    paths: tuple[Path, ...]  # the parameters it fills, in `load`'s output order
    load: Callable  # checkpoint array -> tuple of our arrays
    save: Callable  # our arrays -> checkpoint array
    aliases: tuple[str, ...] = ()  # other names the same tensor may be stored under (tied weights)


def copy(name: str, path: Path, aliases=()) -> Tensor:
    return Tensor(name, (path,), lambda w: (w,), lambda p: p, tuple(aliases))


def linear(name: str, path: Path) -> Tensor:
    """nn.Linear [out, in] <-> kernel [in, out]."""
    return Tensor(name, (path,), lambda w: (w.T,), lambda k: k.T)


def heads_in(name: str, path: Path, heads: int, head_dim: int) -> Tensor:
    """nn.Linear [N * H, D] <-> kernel [D, N, H] (query, key, value)."""
    return Tensor(name, (path,), lambda w: (w.T.reshape(w.shape[1], heads, head_dim),),
                  lambda k: k.reshape(k.shape[0], heads * head_dim).T)


def heads_out(name: str, path: Path, heads: int, head_dim: int) -> Tensor:
    """nn.Linear [D, N * H] <-> kernel [N, H, D] (the output projection)."""
    return Tensor(name, (path,), lambda w: (w.T.reshape(heads, head_dim, w.shape[0]),),
                  lambda k: k.reshape(heads * head_dim, k.shape[-1]).T)


def bias_heads(name: str, path: Path, heads: int, head_dim: int) -> Tensor:
    """[N * H] <-> [N, H]."""
    return Tensor(name, (path,), lambda b: (b.reshape(heads, head_dim),), lambda b: b.reshape(heads * head_dim))


def conv1d_heads_out(name: str, path: Path, heads: int, head_dim: int) -> Tensor:
    """Conv1D [N * H, D] <-> kernel [N, H, D]."""
    return Tensor(name, (path,), lambda w: (w.reshape(heads, head_dim, w.shape[1]),),
                  lambda k: k.reshape(heads * head_dim, k.shape[-1]))


def fused_qkv(name: str, paths: tuple[Path, Path, Path], heads: int, head_dim: int, bias: bool) -> Tensor:
    """GPT-2's c_attn: Conv1D weight [D, 3 * N * H] (or bias [3 * N * H]) <-> q, k, v [D, N, H] ([N, H])."""
    a = heads * head_dim

    def load(w):
        parts = (w[..., :a], w[..., a:2 * a], w[..., 2 * a:])
        return tuple(p.reshape(p.shape[:-1] + (heads, head_dim)) for p in parts)

    def save(q, k, v):
        xp = np if isinstance(q, np.ndarray) else jnp
        return xp.concatenate([x.reshape(x.shape[:-2] + (a,)) for x in (q, k, v)], axis=-1)

    return Tensor(name, paths, load, save)


def row_vector(name: str, path: Path) -> Tensor:
    """[1, V] buffer (BART's final_logits_bias) <-> [V]."""
    return Tensor(name, (path,), lambda b: (b.reshape(-1),), lambda b: b.reshape(1, -1))
