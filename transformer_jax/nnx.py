"""Every model of the library as a Flax NNX module, through Flax's own bridge (`nnx.bridge.ToNNX`).

The models stay Linen; NNX users wrap one and get a stateful `nnx.Module` that works with
`nnx.jit`, `nnx.value_and_grad`, `nnx.Optimizer`, `nnx.state` and the other NNX APIs:

    module = to_nnx(tj.Transformer(cfg), src, tgt_in)          # lazily initialised from examples
    logits = module(src, tgt_in, deterministic=False)          # dropout keys from module's rngs
    encoded = module.encode(src)                               # other methods work too

Parameters keep their logical axis names (`nnx.get_partition_spec`), so `shard` places them with
the same rules table as the Linen path (`sharding.LOGICAL_RULES`). `variables=` (e.g. from
`from_pretrained`) starts from a checkpoint instead of a random initialisation, and
`linen_variables` hands trained weights back to the Linen-side tools (`generate`, `save_pretrained`).

Bridge notes (flax 0.12): a Linen `LogicallyPartitioned` box becomes an `nnx.Param` whose
`out_sharding` holds the logical names; NNX's eager sharding (on by default) would then demand a
mesh at creation, so the wrapper is built with it off and `shard` places parameters afterwards.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax import traverse_util
from jax.sharding import Mesh

from transformer_jax import sharding


def to_nnx(model: nn.Module, *example_inputs, rngs: nnx.Rngs | int = 0,
           variables: Mapping[str, Any] | None = None, **example_kwargs) -> nnx.Module:
    """Wrap the Linen `model` as an NNX module, initialised by one call on `example_inputs`
    (and `example_kwargs`), as `model.init` would be.

    `rngs` (an `nnx.Rngs` or a seed) gives the `params` stream for initialisation and the
    `dropout` stream drawn on every call with `deterministic=False`. With `variables` (Linen
    variables such as `from_pretrained` returns), the parameters are loaded from them
    (see `load_variables`); the initialisation then only fixes their paths and axis names.
    """
    if not isinstance(rngs, nnx.Rngs):
        key = jax.random.key(rngs)
        rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
    with nnx.use_eager_sharding(False):  # logical names need a mesh to shard: see `shard`
        wrapper = nnx.bridge.ToNNX(model, rngs=rngs)
        if variables is None:
            return wrapper.lazy_init(*example_inputs, **example_kwargs)
        # Shapes and axis names only: no random initialisation of weights about to be replaced.
        init = nnx.eval_shape(lambda: nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0)).lazy_init(
            *example_inputs, **example_kwargs))
    for name, value in vars(init).items():  # the model's variables: the bridge's own filter
        if not name.startswith(("to_nnx__", "_pytree__")):
            setattr(wrapper, name, value)
    return load_variables(wrapper, variables)


def load_variables(module: nnx.Module, variables: Mapping[str, Any]) -> nnx.Module:
    """Set `module`'s variables (in place) from Linen `variables` ({collection: nested dict}).

    NNX merges Linen collections into one tree, so a path is the Linen path without its
    collection. Every variable of the module must be given, with its shape: a missing, unknown
    or misshapen path is a named error.
    """
    current = {path: var for path, var in nnx.to_flat_state(nnx.state(module, nnx.Not(nnx.RngState)))}
    collections = {nnx.variable_name_from_type(type(var), allow_register=True) for var in current.values()}
    if not isinstance(variables, Mapping) or not set(variables) <= collections | {"params"}:
        keys = sorted(map(str, variables)) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f"variables must be Linen variables {{collection: tree}}, e.g. {{'params': ...}} "
                         f"(collections of this model: {', '.join(sorted(collections))}); got keys {keys}: "
                         "pass {'params': params} for a bare parameter tree")
    given = {}
    for collection in variables.values():
        given.update(traverse_util.flatten_dict(nn.unbox(dict(collection))))
    missing, unknown = sorted(set(current) - set(given)), sorted(set(given) - set(current))
    if missing or unknown:
        raise ValueError(f"variables do not match the model: missing {_paths(missing)}, "
                         f"unknown {_paths(unknown)}")
    for path, var in current.items():
        value = given[path]
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"variable {'/'.join(map(str, path))} has shape {tuple(value.shape)}, "
                             f"but the model expects {tuple(var.shape)}")
        var.set_value(jnp.asarray(value, var.dtype))  # keeps a sharded value's placement
    return module


def linen_variables(module: nnx.Module) -> dict[str, Any]:
    """The inverse of `load_variables`: `module`'s variables as Linen `{collection: nested dict}`
    of plain arrays, for the Linen-side tools (`generate`, `save_pretrained`, checkpoints)."""
    variables: dict[str, Any] = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Not(nnx.RngState))):
        collection = nnx.variable_name_from_type(type(var), allow_register=True)
        variables.setdefault(collection, {})[path] = var.get_value()
    return {name: traverse_util.unflatten_dict(flat) for name, flat in variables.items()}


def _paths(paths) -> str:
    return "[" + ", ".join("/".join(map(str, p)) for p in paths[:5]) + (", ..." if len(paths) > 5 else "") + "]"


def state_shardings(module: nnx.Module, mesh: Mesh, rules=sharding.LOGICAL_RULES) -> nnx.State:
    """NamedShardings for `nnx.state(module)`, resolved from each variable's logical axis names
    by the rules table; a dimension its mesh axes do not divide is replicated, as on the Linen path."""
    state = nnx.state(module)
    specs = nnx.get_partition_spec(state)

    def resolve(spec: nnx.Variable, var: nnx.Variable) -> nnx.Variable:
        named = nn.logical_to_mesh_sharding(spec.get_value(), mesh, rules)
        return var.replace(sharding.fit_sharding(named, var.shape, mesh))  # the Linen path's divisibility rule
    return jax.tree.map(resolve, specs, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard(module: nnx.Module, mesh: Mesh, rules=sharding.LOGICAL_RULES) -> nnx.Module:
    """Place every variable of `module` (in place) on `mesh` by its logical axis names."""
    state = nnx.state(module)
    nnx.update(module, jax.device_put(state, state_shardings(module, mesh, rules)))
    return module
