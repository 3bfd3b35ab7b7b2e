"""Logical axis names, the one rules table, and mesh construction.

Every parameter and activation in the model is annotated with *logical* axis names
(`nn.with_logical_partitioning`, `nn.with_logical_constraint`). This module resolves them onto
the four mesh axes, in one place:

- `data`   pure data parallelism: parameters replicated, batch split;
- `fsdp`   batch split AND parameters split along `embed` (ZeRO-3 / fully sharded data parallel);
- `expert` batch split AND mixture-of-experts weights split by expert (GShard's expert
           parallelism: each device holds E / mesh.expert experts; the tokens routed to them
           arrive by an all-to-all that XLA inserts between the batch-sharded rows and the
           expert-sharded dispatch, moe.py); a data axis for dense layers;
- `tensor` Megatron-style model parallelism over heads, MLP hidden units and the vocabulary.

The same code runs on 1 CPU, 8 simulated CPU devices, a GPU or a TPU slice, single- or multi-host.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")

# The one rules table: logical name -> mesh axis (or axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("expert", "expert"),  # MoE weights [E, ...] and dispatched tokens [E, B, C, D]
    ("expert_batch", ("data", "fsdp")),  # the rows of dispatched tokens: the batch axes but `expert`
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("classes", None),
    ("norm", None),
    ("layers", None),
)


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fill a single -1 entry so the product equals `num_devices`; check divisibility.

    Errors name the field (`mesh.<axis>`), the value, and what would be valid.
    """
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh has unknown axes {sorted(unknown)}; valid axes: {', '.join(MESH_AXES)}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{axis}={size} is invalid; use a positive size or -1 (fill the rest)")
    if len(fill) > 1:
        raise ValueError(f"mesh: only one axis may be -1; got {', '.join('mesh.' + a for a in fill)}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if num_devices % known:
            raise ValueError(
                f"mesh.{fill[0]}=-1 cannot fill {num_devices} devices: the other axes multiply to {known}, "
                f"which does not divide {num_devices}")
        sizes[fill[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(
            f"mesh sizes {sizes} multiply to {known}, but there are {num_devices} devices; "
            "make the product equal the device count or set one axis to -1")
    return sizes


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, expert, tensor) mesh; by default all devices on `data`.

    `jax.make_mesh` orders devices so that each host's devices are contiguous along the
    batch axes, which `jax.make_array_from_process_local_data` relies on.
    """
    shape = dict(shape or {"data": -1})
    devices = list(devices) if devices is not None else jax.devices()
    sizes = resolve_mesh_shape(shape, len(devices))
    axis_shapes = tuple(sizes[a] for a in MESH_AXES)
    # Auto axes: the compiler propagates shardings from our logical constraints.
    return jax.make_mesh(axis_shapes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def mesh_summary(mesh: Mesh) -> str:
    axes = " × ".join(f"{name}={size}" for name, size in mesh.shape.items())
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return f"mesh {axes} over {mesh.devices.size} {'/'.join(kinds)} device(s), {jax.process_count()} process(es)"


def batch_size_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the number of batch shards)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings for a tree of (possibly `nn.Partitioned`-boxed) leaves; unannotated leaves replicate.

    A dimension that its mesh axes do not divide is replicated instead (e.g. 2 key/value heads of
    grouped-query attention on a 4-way `tensor` axis, as MaxText does), so any model fits any mesh.
    """
    specs = nn.get_partition_spec(abstract_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    # paired along the shardings' own leaves, so empty nodes (optax.MaskedNode) cannot shift them
    return jax.tree_util.tree_map(
        lambda sh, x: fit_sharding(sh, getattr(nn.unbox(x), "shape", None), mesh), shardings, abstract_tree,
        is_leaf=lambda x: isinstance(x, NamedSharding))


def fit_sharding(sharding: NamedSharding, shape, mesh: Mesh) -> NamedSharding:
    """`sharding` with every mesh axis that does not divide its dimension of `shape` dropped.

    Except the experts: replicating them would silently undo expert parallelism, so a dimension on
    the `expert` axis that it does not divide is an error (see `check_experts`).
    """
    if shape is None:
        return sharding
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    for i, axes in enumerate(spec):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if names == ("expert",):  # the logical `expert` axis (the batch's tuple includes it too)
            check_experts(shape[i], mesh.shape["expert"])
        if names and shape[i] % math.prod(mesh.shape[a] for a in names):
            spec[i] = None
    return NamedSharding(mesh, P(*spec))


def check_experts(num_experts: int, expert_axis: int) -> None:
    """Each device of the `expert` axis holds num_experts / mesh.expert whole experts."""
    if num_experts and num_experts % expert_axis:
        valid = [n for n in range(expert_axis, 4 * expert_axis + 1, expert_axis)]
        raise ValueError(f"TransformerConfig.num_experts={num_experts} is not divisible by the expert mesh axis "
                         f"mesh.expert={expert_axis}; use a multiple of {expert_axis} experts (e.g. "
                         f"{', '.join(map(str, valid))}) or a mesh.expert that divides {num_experts}")


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dim split over data×fsdp×expert, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble global arrays from this process's part of the batch.

    Each process passes the rows it loaded (its `1 / process_count` of the global batch);
    on one process this is simply a sharded `device_put`.
    """
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in batch.items()}


def batch_spec_tree(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    return {k: batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}


# Whether `activate` puts the mesh in scope, which turns the model's `nn.with_logical_constraint`
# calls into real constraints (needs layers that box full-shape kernels; see layers.Projection).
CONSTRAIN_ACTIVATIONS = True


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_RULES, constrain_activations: bool | None = None):
    """Logical rules (and, if enabled, the mesh) in scope while tracing and compiling the steps."""
    constrain = CONSTRAIN_ACTIVATIONS if constrain_activations is None else constrain_activations
    with contextlib.ExitStack() as stack:
        if constrain:
            stack.enter_context(jax.set_mesh(mesh))
        stack.enter_context(nn.logical_axis_rules(rules))
        yield
