"""Weight-only quantized inference: int8 per output channel, or bfloat16 / float16 casts.

int8 is symmetric and per output channel (as in LLM.int8's vector-wise weights, Dettmers et al.
2022, and PTQ practice): for a projection kernel W [*in, *out],

    scale[o] = max_i |W[i, o]| / 127,   q[i, o] = round(W[i, o] / scale[o]) in [-127, 127],

so each weight is off by at most scale[o] / 2. Biases, norms and position tables stay float32
(a few per cent of the bytes). Embedding tables can be quantized per row (`embeddings=True`).

Running it: `dequantize(q)` multiplies the scales back in; done inside `jit` (as `apply` and
`generate` here do), the parameters are stored and passed as int8 and the float32 weights exist
only inside the compiled call (XLA:CPU materialises them as temporaries of the call rather than
fusing the multiply into the matmuls: stored bytes drop ~4x, a call's peak less; see
benchmarks/quantize.py). The model itself is unchanged, so generation, classification and any
`method` work. Weight-only quantization saves memory, not time: the matmuls still run in float32.

Why not qwix (0.1.8, the maintained JAX quantization library): its PTQ provider does quantize our
linen `Projection` einsums weight-only, but it wraps the model in a new module type that
`decode.generate` does not dispatch on, intercepts only the methods named when wrapping, needs
unboxed params, and on a tied-embedding `Transformer` it quantizes the embedding (used by an
einsum in `attend`) and then fails at the `jnp.take` lookup of the same table. A parameter
transformation is ~100 lines, touches no module, and works for every model and method.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.lora import in_dims, stacked_dims

DTYPES = ("int8", "bfloat16", "float16")
SCALE_SUFFIX = "_scale"  # "kernel" -> its per-output-channel scale is the sibling "kernel_scale"


@flax.struct.dataclass
class QuantizedVariables:
    """Model variables with int8 or 16-bit weights; `dequantize()` gives what `model.apply` takes.

    A wrapper (not a plain dict) so that passing it to `model.apply` by mistake fails at once
    instead of running on unscaled int8 weights.
    """

    variables: Any  # {"params": ...}; int8 leaves `X` with float32 siblings `X_scale`
    dtype: str = flax.struct.field(pytree_node=False)

    @property
    def nbytes(self) -> int:
        return tree_bytes(self.variables)

    def dequantize(self):
        return dequantize(self)

    def apply(self, model: nn.Module, *args, **kwargs):
        """`model.apply` on the dequantized variables (call it inside `jit` to keep int8 in memory)."""
        return model.apply(dequantize(self), *args, **kwargs)


def tree_bytes(tree) -> int:
    """Bytes of every array leaf of a tree."""
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(np.shape(x)))
                   for x in jax.tree_util.tree_leaves(nn.meta.unbox(tree))))


def _dtype_name(dtype) -> str:
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = jnp.dtype(dtype).name
        except TypeError:
            name = repr(dtype)
    if name not in DTYPES:
        raise ValueError(f"quantize: dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    return name


def quantize_int8(w: jax.Array, n_in: int, stacked: int = 0) -> tuple[jax.Array, jax.Array]:
    """Symmetric per-output-channel int8: W [*in, *out] -> (q int8 [*in, *out], scale float32 [*out]).
    With `stacked` leading layer axes (a scanned stack), W [L, *in, *out] gets a scale per layer and
    channel, [L, 1.., *out] (kept axes, so `dequantize`'s product broadcasts)."""
    w = jnp.asarray(w, jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=tuple(range(stacked, stacked + n_in)), keepdims=stacked > 0) / 127.0
    safe = jnp.where(scale > 0, scale, 1.0)  # an all-zero channel stays zero
    q = jnp.clip(jnp.round(w / safe), -127, 127).astype(jnp.int8)
    return q, scale


EXPERT_WEIGHTS = ("wi", "wi_gate", "wo")  # moe.MoEMLP's expert kernels; its router stays float32


def _refuse_quantized(params) -> None:
    """Quantizing twice rescales the int8 values (scales ~1) and breaks the model in silence."""
    def walk(node, path):
        if not isinstance(node, Mapping):
            return
        for k, v in node.items():
            where = "/".join((*path, str(k)))
            if isinstance(k, str) and k.endswith(SCALE_SUFFIX):
                raise ValueError(f"quantize: these variables are already quantized (they hold {where}); "
                                 "quantize the float32 variables, or dequantize first")
            if not isinstance(v, Mapping) and jnp.issubdtype(jnp.asarray(v).dtype, jnp.integer) \
                    and k in ("kernel", "embedding", *EXPERT_WEIGHTS):
                raise ValueError(f"quantize: these variables are already quantized ({where} is "
                                 f"{jnp.asarray(v).dtype.name}, an int8 kernel); quantize the float32 variables")
            walk(v, (*path, str(k)))
    walk(params, ())


def quantize(variables, dtype: str = "int8", *, embeddings: bool = False) -> QuantizedVariables:
    """Weight-only quantized copy of `variables` ({"params": ...} or the params tree itself).

    "int8": every projection `kernel` per output channel, the experts of a mixture-of-experts
    layer per expert and output channel (the router stays float32), and with `embeddings` every
    token `embedding` table per row; "bfloat16" / "float16": every floating parameter cast.
    Variables that are already quantized (int8 kernels, or `*_scale` leaves) are refused.
    """
    name = _dtype_name(dtype)
    if isinstance(variables, QuantizedVariables):
        raise ValueError(f"quantize: these variables are already quantized ({variables.dtype}); "
                         "quantize the float32 variables")
    wrapped = isinstance(variables, Mapping) and "params" in variables
    params = nn.meta.unbox(variables["params"] if wrapped else variables)
    _refuse_quantized(params)
    if name != "int8":
        target = jnp.dtype(name)
        cast = jax.tree.map(lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    else:
        def walk(node, path):
            if not isinstance(node, Mapping):
                return node
            out = {k: walk(v, path + (str(k),)) for k, v in node.items()}
            if "kernel" in node and not isinstance(node["kernel"], Mapping):
                out["kernel"], out["kernel" + SCALE_SUFFIX] = quantize_int8(node["kernel"], in_dims(path, node),
                                                                               stacked_dims(path))
            elif "router" in node and not isinstance(node["router"], Mapping):  # moe.MoEMLP: per expert
                for k in EXPERT_WEIGHTS:  # [(L,) E, in, out]: one scale per (layer,) expert and channel
                    if k in node:
                        out[k], out[k + SCALE_SUFFIX] = quantize_int8(node[k], 1, stacked_dims(path) + 1)
            elif embeddings and "embedding" in node and np.ndim(node["embedding"]) == 2 \
                    and path and path[-1].endswith("embedding"):
                q, scale = quantize_int8(jnp.swapaxes(node["embedding"], 0, 1), 1)  # per row [V]
                out["embedding"], out["embedding" + SCALE_SUFFIX] = jnp.swapaxes(q, 0, 1), scale[:, None]
            return out

        cast = walk(params, ())
    rest = {k: v for k, v in variables.items() if k != "params"} if wrapped else {}
    return QuantizedVariables({**rest, "params": cast}, name)


def dequantize(q: QuantizedVariables | Any):
    """The variables `model.apply` takes: int8 leaves times their scales (float32); 16-bit casts
    are returned as they are (the model computes in its own dtype). Plain variables pass through."""
    if not isinstance(q, QuantizedVariables):
        return q
    if q.dtype != "int8":
        return q.variables

    def walk(node):
        if not isinstance(node, Mapping):
            return node
        out = {}
        for k, v in node.items():
            if isinstance(k, str) and k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] in node:
                continue
            scale = node.get(f"{k}{SCALE_SUFFIX}") if isinstance(k, str) else None
            out[k] = walk(v) if scale is None else v.astype(jnp.float32) * scale
        return out

    return walk(q.variables)


def apply(model: nn.Module, q: QuantizedVariables, *args, **kwargs):
    """`model.apply(dequantize(q), *args, **kwargs)`."""
    return model.apply(dequantize(q), *args, **kwargs)


def generate(model: nn.Module, q: QuantizedVariables, inputs, **kwargs):
    """`transformer_jax.generate` on quantized variables, jitted so the int8 weights stay int8 in
    memory and are scaled inside the compiled program (once per call, before the decoding loop).
    Keyword arguments as for `generate`; array ones (rng, prompt_lengths, ...) are traced, the rest
    are static (one compilation per model and settings)."""
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, (jax.Array, np.ndarray))}
    static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in arrays))
    return _generate_jit(model, q, jnp.asarray(inputs), arrays, static)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _generate_jit(model, q, inputs, arrays, static):
    from transformer_jax.decode import generate as _generate

    return _generate(model, dequantize(q), inputs, **dict(static), **arrays)
