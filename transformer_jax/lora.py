"""LoRA: low-rank adapters on projection kernels (Hu et al. 2021, "LoRA", eq. 3).

A targeted kernel W [*in, *out] is used as W + (alpha / r) · A B with A [*in, r] and B [r, *out]
(a contraction over the multi-dim in/out axes of our `layers.Projection` kernels: query/key/value
[D, N, H], out [N, H, D], wi/wi_gate [D, F], wo [F, D], logits [D, V], heads). A is drawn
N(0, 1/fan_in), B is zero, so a fresh adapter changes nothing.

Written as a pure parameter transformation rather than with a library, because none fits:
- qwix (0.1.8, the maintained JAX option) intercepts einsum inside linen modules; on our
  `Projection` its `LoraProvider.einsum` sets an attribute on the frozen linen module and fails
  (`SetAttributeFrozenModuleError`), it stores the adapters inside the model's own parameter tree,
  and it only intercepts the methods named when the model is wrapped (generation calls
  `encode`/`decode` on a module type that `decode.py` dispatches on);
- Flax's own LoRA (`nnx.LoRA`) is NNX-only; these models are linen.
Here the adapters are their own pytree, nested like the parameters: at the path of each targeted
projection, `{"a": [*in, r], "b": [r, *out]}`. The model runs unchanged on
`merge_lora(frozen, adapters, config)`, gradients are taken with respect to the adapters alone,
the optimiser state is adapter-sized, and saving adapters alone is saving that tree.

The same tree may also hold parameters trained in full (`init_lora(..., full=paths)`): a new
classifier head that starts from random numbers has nothing for a low-rank update to adapt, so
it is trained whole (as PEFT's `modules_to_save`); `merge_lora` puts such leaves in place of the
base's, and `save_adapters` writes them beside the factors. In the training loop
(`train/adapters.py`, config section `lora`) these are the parameters `init_from` leaves fresh.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.scan import SCAN_NAME

PROJECTIONS = ("query", "key", "value", "out", "wi", "wi_gate", "wo", "logits", "pooler", "classifier",
               "transform")
# Projections whose kernel takes more than one input axis (attention `out`: [N, H, D]).
IN_DIMS = {"out": 2}
ADAPTER_FILE, CONFIG_FILE = "adapters.safetensors", "lora_config.json"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, scale alpha (the update is scaled by alpha / r), and the projections to adapt.

    `targets` are projection names (`PROJECTIONS`, e.g. ("query", "value"), the paper's choice) or
    regular expressions matched in full against a projection's path, e.g.
    "encoder/layer_[01]/.*/query".
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)) or self.rank <= 0:
            raise ValueError(f"lora.rank must be a positive integer; got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, np.number)) \
                or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"lora.alpha must be a positive number; got {self.alpha!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"lora.targets must be a non-empty tuple of projection names or path "
                             f"patterns (names: {', '.join(PROJECTIONS)}); got {self.targets!r}")
        for t in targets:
            try:
                re.compile(t)
            except re.error as e:
                raise ValueError(f"lora.targets entry {t!r} is not a valid regular expression: {e}") from None
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}


def from_config(section) -> LoraConfig | None:
    """The `lora` section of an experiment config ({rank, alpha, targets}) as a LoraConfig, or None
    when LoRA is off: no section, or rank 0 (as `eval_every=0` means never). A negative rank, a
    non-positive alpha or empty targets are named errors."""
    if section is None:
        return None
    get = section.get if hasattr(section, "get") else lambda k, d=None: getattr(section, k, d)
    rank = get("rank", 0)
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool) and rank == 0:
        return None
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool) and rank < 0:
        raise ValueError(f"lora.rank must be a positive integer (0 turns LoRA off); got {rank}")
    return LoraConfig(rank=rank, alpha=get("alpha", 16.0), targets=tuple(get("targets", ("query", "value"))))


def _projections(params) -> dict[tuple[str, ...], Any]:
    """Every sub-dict that holds a `kernel`, by its path of keys: {("encoder", ..., "query"): node}."""
    found = {}

    def walk(tree, path):
        if isinstance(tree, Mapping):
            if "kernel" in tree and not isinstance(tree["kernel"], Mapping):
                found[path] = tree
            for k, v in tree.items():
                if isinstance(v, Mapping):
                    walk(v, path + (str(k),))

    walk(params, ())
    return found


def _matches(path: tuple[str, ...], targets: tuple[str, ...]) -> bool:
    joined = "/".join(path)
    return any(t == path[-1] or re.fullmatch(t, joined) for t in targets)


def targeted(params, config: LoraConfig, full=()) -> dict[tuple[str, ...], Any]:
    """The projections `config.targets` select, by path; a named error if it selects none.

    Projections whose kernel is among `full` ('/'-joined parameter paths trained in full) are left
    out: a parameter trained whole needs no low-rank update."""
    projections = _projections(_unwrap(params))
    full = set(full)
    chosen = {p: k for p, k in projections.items() if p and _matches(p, config.targets)}
    kept = {p: k for p, k in chosen.items() if "/".join(p + ("kernel",)) not in full}
    if not kept:
        names = sorted({p[-1] for p in projections if p})
        why = (f"only projections trained in full ({', '.join(sorted('/'.join(p) for p in chosen))}: "
               "init_from leaves them fresh)" if chosen else "no projection of this model")
        raise ValueError(f"lora.targets={config.targets} match {why}; its projections are "
                         f"{', '.join(names) or '(none)'} (a target is one of these names or a regular "
                         "expression over paths like 'encoder/layer_0/.../query')")
    return kept


def _unwrap(variables):
    """Accept {"params": tree} as well as the tree itself."""
    if isinstance(variables, Mapping) and set(variables) == {"params"}:
        return variables["params"]
    return variables


def stacked_dims(path: tuple[str, ...]) -> int:
    """Leading kernel axes that stack layers: 1 under a scanned stack (`scan_layers=True`, kernels
    [layers, *in, *out]), else 0. Adapters and int8 scales keep that axis: one per layer."""
    return int(SCAN_NAME in path)


def in_dims(path: tuple[str, ...], node: Mapping) -> int:
    """How many kernel axes are inputs (after any stacked layer axis): kernel [*in, *out] and bias
    [*out] tell; without a bias, the projection's name does (attention `out` takes [N, H])."""
    kernel, bias = nn.meta.unbox(node["kernel"]), nn.meta.unbox(node.get("bias"))
    if bias is not None and 0 < np.ndim(bias) < np.ndim(kernel):
        return np.ndim(kernel) - np.ndim(bias)
    return IN_DIMS.get(path[-1], 1)


def init_lora(rng: jax.Array, params, config: LoraConfig, *, full=()):
    """Fresh adapters for the targeted kernels: A ~ N(0, 1/fan_in) [*in, r], B = 0 [r, *out].

    If the kernels carry logical axis names (`nn.LogicallyPartitioned`, as `model.init` returns
    them), A and B carry the same names on their in / out axes (the rank axis is replicated), so
    `sharding.logical_shardings` places them like their kernels.

    `full`: '/'-joined paths of parameters trained in full (e.g. a fresh `classifier/kernel`);
    they are copied into the tree at their own paths (boxes kept) and get no factors.
    """
    chosen = targeted(params, config, full)
    adapters: dict = {}
    tree = _unwrap(params)
    for name in sorted(set(full)):
        *path, leaf = name.split("/")
        node, dest = tree, adapters
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                raise ValueError(f"lora: {name!r} (to train in full) is not a parameter of this model")
            node, dest = node[key], dest.setdefault(key, {})
        if not isinstance(node, Mapping) or leaf not in node or isinstance(node[leaf], Mapping):
            raise ValueError(f"lora: {name!r} (to train in full) is not a parameter of this model")
        dest[leaf] = node[leaf]
    for i, (path, node) in enumerate(sorted(chosen.items())):
        kernel = node["kernel"]
        value = nn.meta.unbox(kernel)
        n_in, s = in_dims(path, node), stacked_dims(path)
        lead, in_shape, out_shape = value.shape[:s], value.shape[s:s + n_in], value.shape[s + n_in:]
        largest = max(math.prod(in_shape), math.prod(out_shape))  # (above min(in, out) the update is full rank)
        if config.rank > largest:
            raise ValueError(f"lora.rank={config.rank} exceeds the dimensions of {'/'.join(path)}/kernel "
                             f"({math.prod(in_shape)} in, {math.prod(out_shape)} out): the factors would be larger "
                             f"than the kernel; use lora.rank <= {min(math.prod(in_shape), math.prod(out_shape))}")
        dtype = value.dtype if jnp.issubdtype(value.dtype, jnp.floating) else jnp.float32
        std = 1.0 / math.sqrt(math.prod(in_shape))
        a = std * jax.random.normal(jax.random.fold_in(rng, i), (*lead, *in_shape, config.rank), jnp.float32)
        a = a.astype(dtype)
        b = jnp.zeros((*lead, config.rank, *out_shape), dtype)
        if isinstance(kernel, nn.LogicallyPartitioned):
            names = tuple(kernel.names)
            a = nn.LogicallyPartitioned(a, names[:s + n_in] + (None,))
            b = nn.LogicallyPartitioned(b, names[:s] + (None,) + names[s + n_in:])
        node = adapters
        for key in path:
            node = node.setdefault(key, {})
        node.update(a=a, b=b)
    return adapters


def _adapter_leaves(adapters) -> dict[tuple[str, ...], tuple[Any, Any]]:
    """{projection path: (A, B)} of the factor pairs in an adapters tree."""
    return _split(adapters)[0]


def _split(adapters) -> tuple[dict[tuple[str, ...], tuple[Any, Any]], dict[tuple[str, ...], Any]]:
    """({projection path: (A, B)}, {parameter path: value} of the parameters trained in full)."""
    factors, full = {}, {}

    def walk(tree, path):
        if isinstance(tree, Mapping):
            if "a" in tree and "b" in tree and not isinstance(tree["a"], Mapping):
                factors[path] = (tree["a"], tree["b"])
                return
            for k, v in tree.items():
                walk(v, path + (str(k),))
        elif tree is not None:
            full[path] = tree

    walk(adapters, ())
    return factors, full


def delta(a: jax.Array, b: jax.Array, scale: float, stacked: int = 0) -> jax.Array:
    """(alpha / r) · A B: [*in, r], [r, *out] -> [*in, *out], accumulated in float32; with `stacked`
    leading layer axes, one product per layer."""
    product = lambda a, b: jnp.tensordot(a, b, axes=1)  # noqa: E731
    for _ in range(stacked):
        product = jax.vmap(product)
    return scale * product(a.astype(jnp.float32), b.astype(jnp.float32))


def _check_rank(path: tuple[str, ...], a, b, config: LoraConfig) -> None:
    """A [*in, r] and B [r, *out] agree on r, and r is the config's (the update is scaled by alpha / r:
    another r would scale it wrongly, in silence)."""
    s = stacked_dims(path)
    r_a, r_b = np.shape(a)[-1], (np.shape(b)[s] if np.ndim(b) > s else None)
    where = "/".join(path)
    if r_a != r_b:
        raise ValueError(f"merge_lora: the adapters at {where} disagree: A has rank {r_a} (shape {np.shape(a)}), "
                         f"B has rank {r_b} (shape {np.shape(b)})")
    if r_a != config.rank:
        raise ValueError(f"merge_lora: the adapters at {where} have rank {r_a}, but LoraConfig.rank="
                         f"{config.rank} (the update is scaled by alpha / rank); merge with the config they "
                         f"were trained with (load_adapters returns it)")


def merge_lora(params, adapters, config: LoraConfig):
    """The parameters with each adapted kernel replaced by W + (alpha / r) · A B (plain arrays),
    and each parameter the adapters hold in full (see `init_lora(full=...)`) replaced by theirs.

    Takes `params` or `{"params": params}` (and returns the same form). Used both to fold trained
    adapters into the base weights for inference and, inside the train step, to build the
    parameters the model runs on (then only the adapters are differentiated).
    """
    wrapped = isinstance(params, Mapping) and set(params) == {"params"}
    tree = nn.meta.unbox(_unwrap(params))
    leaves, full = _split(nn.meta.unbox(_unwrap(adapters)))
    kernels = _projections(tree)
    missing = sorted("/".join(p) for p in leaves if p not in kernels)
    missing += sorted("/".join(p) for p in full if not _has_leaf(tree, p))
    if missing:
        raise ValueError(f"merge_lora: adapters at {', '.join(missing)} have no parameter in these params")

    def rebuild(node, path):
        if not isinstance(node, Mapping):
            if path in full:
                if np.shape(full[path]) != np.shape(node):
                    raise ValueError(f"merge_lora: {'/'.join(path)} is {np.shape(full[path])} in the adapters, "
                                     f"but {np.shape(node)} in the params")
                return jnp.asarray(full[path]).astype(node.dtype)
            return node
        out = {k: rebuild(v, path + (str(k),)) for k, v in node.items()}
        if path in leaves:
            a, b = leaves[path]
            _check_rank(path, a, b, config)
            w = node["kernel"]
            d = delta(a, b, config.scale, stacked_dims(path))
            if d.shape != w.shape:
                raise ValueError(f"merge_lora: adapter at {'/'.join(path)} gives an update of shape "
                                 f"{d.shape}, but the kernel is {w.shape}")
            out["kernel"] = (w.astype(jnp.float32) + d).astype(w.dtype)
        return out

    merged = rebuild(tree, ())
    return {"params": merged} if wrapped else merged


def _has_leaf(tree, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return False
        tree = tree[key]
    return not isinstance(tree, Mapping)


def lora_train_fns(frozen_params, config: LoraConfig) -> tuple[Callable, Callable]:
    """(init(rng) -> adapters, params_for_apply(adapters, frozen=frozen_params) -> params).

    The loss calls `model.apply({"params": params_for_apply(adapters, frozen)}, ...)` and
    differentiates with respect to `adapters` alone; `frozen` passes through `stop_gradient`, and
    `tx.init(adapters)` makes the optimiser state adapter-sized. Pass `frozen` explicitly inside a
    jitted step (an argument, not a closed-over constant of the compiled program).
    """
    targeted(frozen_params, config)  # the named error before anything compiles

    def init(rng):
        return init_lora(rng, frozen_params, config)

    def params_for_apply(adapters, frozen=None):
        base = jax.lax.stop_gradient(nn.meta.unbox(frozen_params if frozen is None else frozen))
        return merge_lora(base, adapters, config)

    return init, params_for_apply


def adapter_count(adapters) -> int:
    """The number of trained numbers: sum of A and B sizes (and of parameters trained in full)."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(nn.meta.unbox(adapters))))


def save_adapters(path: str, adapters, config: LoraConfig) -> None:
    """Write `adapters.safetensors` (keys "encoder/layer_0/.../query/a", and e.g. "classifier/kernel"
    for a parameter trained in full) and `lora_config.json` into the directory `path`: the base
    model is not written. Atomic per file (a temporary name, then `os.replace`)."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    factors, full = _split(nn.meta.unbox(adapters))
    flat = {}
    for p, (a, b) in factors.items():
        key = "/".join(p)
        flat[f"{key}/a"], flat[f"{key}/b"] = np.asarray(jax.device_get(a)), np.asarray(jax.device_get(b))
    flat.update({"/".join(p): np.asarray(jax.device_get(v)) for p, v in full.items()})
    target = os.path.join(path, ADAPTER_FILE)
    save_file(flat, target + ".tmp")
    os.replace(target + ".tmp", target)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config.to_dict(), f, indent=1)


def load_adapters(path: str) -> tuple[dict, LoraConfig]:
    """(adapters, config) written by `save_adapters`."""
    from safetensors.numpy import load_file

    files = [os.path.join(path, n) for n in (ADAPTER_FILE, CONFIG_FILE)]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
        raise FileNotFoundError(f"load_adapters: {path!r} lacks {', '.join(absent)} (written by save_adapters)")
    config = _read_lora_config(files[1])
    try:
        stored = load_file(files[0])
    except Exception as err:  # safetensors' SafetensorError and friends: a truncated or corrupt file
        raise ValueError(f"load_adapters: {files[0]} is not a readable safetensors file (truncated or "
                         f"corrupt?): {err}") from None
    adapters: dict = {}
    for key, value in stored.items():
        *p, leaf = key.split("/")
        node = adapters
        for k in p:
            node = node.setdefault(k, {})
        node[leaf] = jnp.asarray(value)
    return adapters, config


def _read_lora_config(path: str) -> LoraConfig:
    """`lora_config.json` as a LoraConfig; every defect one ValueError naming the file and field."""
    try:
        with open(path, "rb") as f:
            cfg = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"load_adapters: {path} is not valid UTF-8 JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"load_adapters: {path} must hold a JSON object {{rank, alpha, targets}}, "
                         f"not a {type(cfg).__name__}")
    absent = [k for k in ("rank", "alpha", "targets") if k not in cfg]
    if absent:
        raise ValueError(f"load_adapters: {path} lacks {', '.join(map(repr, absent))} (save_adapters writes "
                         "rank, alpha and targets)")
    targets = cfg["targets"]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"load_adapters: {path}: targets={targets!r} must be a list of strings")
    try:
        return LoraConfig(rank=cfg["rank"], alpha=cfg["alpha"], targets=tuple(targets))
    except ValueError as err:
        raise ValueError(f"load_adapters: {path}: {err}") from None
