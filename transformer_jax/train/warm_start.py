"""Fine-tuning: start from another run's parameters (`config.init_from`) and freeze some (`config.freeze`).

`init_from` is one of our workdirs (its latest checkpoint's params, restored through its own saved
config) or a Hugging Face model directory (`transformer_jax.from_pretrained`). Parameters whose
path and shape match are loaded, placed on the new state's shardings; the others (new heads) keep
their fresh initialisation; a path present in both with different shapes is an error that lists
every such parameter with both shapes. Paths are '/'-joined (`encoder/layer_0/mlp/wi/kernel`);
the embedding table that a `MaskedLM` or `DecoderLM` keeps at `embedding/...` is the one an
`EncoderClassifier` keeps inside its encoder (`encoder/embedding/...`), so each is found under the
other's name.

Applied only when the workdir has no checkpoint of its own: a resumed run restores its own state,
so fine-tuning resumes exactly like any run.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

ALIASES = (("encoder/embedding/", "embedding/"), ("embedding/", "encoder/embedding/"))


def path_string(path) -> str:
    """A jax key path -> 'encoder/layer_0/mlp/wi/kernel' (flax's boxed `.value` left out)."""
    parts = []
    for key in path:
        name = getattr(key, "key", None) if hasattr(key, "key") else getattr(key, "name", None)
        if name is None:
            name = getattr(key, "idx", None)
        if name == "value" and not hasattr(key, "key"):  # nn.Partitioned's field
            continue
        parts.append(str(name))
    return "/".join(parts)


def freeze(tx: optax.GradientTransformation, patterns: tuple[str, ...]) -> optax.GradientTransformation:
    """`tx` with zero updates for the parameters whose path matches one of `patterns` (re.fullmatch).

    Their gradients are zeroed before `tx` (so clipping and the moments see only the trained ones)
    and their updates after it (so weight decay leaves them alone too). Stateless masks: the state
    keeps its shape (optax.multi_transform's MaskedNode leaves do not fit the sharding rules' trees).
    """
    compiled = [re.compile(p) for p in patterns]

    def frozen(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(c.fullmatch(path_string(path)) for c in compiled), params)

    zero = optax.masked(optax.set_to_zero(), frozen)
    return optax.chain(zero, tx, zero)


def check_freeze(params, patterns: tuple[str, ...]) -> list[str]:
    """The frozen parameter paths; a pattern that matches no parameter is an error naming it."""
    paths = [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    frozen = []
    for pattern in patterns:
        hits = [p for p in paths if re.fullmatch(pattern, p)]
        if not hits:
            raise ValueError(f"config.freeze: {pattern!r} matches no parameter; parameters are named like "
                             f"{', '.join(paths[:4])} ...")
        frozen += hits
    return sorted(set(frozen))


# ----------------------------------------------------------------------------------------------
# Source parameters


def source_params(path: str, mesh, cfg=None, variables=None) -> tuple[dict[str, Any], str]:
    """('/'-joined path -> array, description) of `path`: our workdir or a Hugging Face directory,
    in the layout of a model with config `cfg` (stacked layers if `cfg.scan_layers`; per layer
    otherwise or without `cfg`), whatever layout the source was saved in."""
    from transformer_jax.checkpoint import committed_steps

    if committed_steps(os.path.join(path, "checkpoints")):
        source, where = _workdir_params(path, mesh)
    else:
        from transformer_jax.pretrained import from_pretrained

        if variables is None:  # not read already (train/checkpoint_source.py reads it once)
            _, variables = from_pretrained(path)
        source, where = flatten_dict(dict(variables["params"]), sep="/"), "a Hugging Face checkpoint"
    return _in_layout(source, cfg, where), where


def _scanned(cfg) -> bool:
    from transformer_jax.config import TransformerConfig

    return isinstance(cfg, TransformerConfig) and cfg.scan_layers


def _in_layout(source: dict[str, Any], cfg, where: str) -> dict[str, Any]:
    """Per-layer source parameters stacked like a `scan_layers=True` model's (`scan.stack_layers`)."""
    if not _scanned(cfg):
        return source
    from transformer_jax.scan import stack_layers

    try:
        return flatten_dict(stack_layers(unflatten_dict(source, sep="/"), cfg), sep="/")
    except KeyError as missing:
        raise ValueError(f"config.init_from: {where} has fewer layers than the model (no {missing.args[0]}); "
                         "a scanned model loads every layer of its stacks") from None


def _workdir_params(path: str, mesh) -> tuple[dict[str, Any], str]:
    """The latest checkpoint's params of one of our workdirs, restored (params alone: the rest of
    its state may come from older code) into shapes built from its saved config, on `mesh`."""
    from transformer_jax.train import build
    from transformer_jax.train.experiment import build_model, config_task
    from transformer_jax.train.state import abstract_state, abstract_train_state

    config = build.load_config(path)
    if config.get("lora", None) is not None and config.lora.get("rank", 0):
        raise ValueError(f"config.init_from={path!r} is a LoRA run: its checkpoints hold adapters, not a model; "
                         f"start from its own init_from ({config.get('init_from', '') or 'a random base'}) "
                         f"and fold its adapters ({os.path.join(path, 'adapters')}) in with tj.merge_lora")
    task = config_task(config)
    model = build_model(config, task)
    shapes = task.batch_shapes(config.batch_size, config.data.max_src_len, config.data.max_tgt_len)
    abstract, shardings = abstract_train_state(model, optax.identity(), shapes, mesh, task=task)
    ckpt = build.checkpointer(config, path, track_best=False)
    try:
        params, step = ckpt.restore_params(abstract_state(abstract, shardings).params)
    finally:
        ckpt.close()
    if _scanned(getattr(model, "cfg", None)):  # saved stacked: back to per layer, the common form
        from transformer_jax.scan import unstack_layers

        params = unstack_layers(dict(params), model.cfg)
    return flatten_dict(dict(params), sep="/"), f"step {step} of a {type(model).__name__} workdir"


# ----------------------------------------------------------------------------------------------
# Loading


def _find(name: str, source: dict) -> str | None:
    if name in source:
        return name
    for ours, theirs in ALIASES:
        if name.startswith(ours) and theirs + name[len(ours):] in source:
            return theirs + name[len(ours):]
    return None


def match(params, source: dict[str, Any], where: str) -> tuple[dict[str, str], list[str]]:
    """({model path: source path} of the parameters to load, fresh model paths); `params` may be
    shapes only. A path in both with different shapes, or nothing in common, is a named error."""
    flat = flatten_dict(dict(params), sep="/")
    loaded, fresh, mismatched = {}, [], []
    for name, value in flat.items():
        key = _find(name, source)
        if key is None:
            fresh.append(name)
        elif tuple(np.shape(source[key])) != tuple(np.shape(value)):
            mismatched.append(f"{name}: {where} {tuple(np.shape(source[key]))} vs model {tuple(np.shape(value))}")
        else:
            loaded[name] = key
    if mismatched:
        raise ValueError(f"config.init_from: {len(mismatched)} parameter(s) exist in both with different shapes: "
                         + "; ".join(mismatched))
    if not loaded:
        raise ValueError(f"config.init_from: no parameter of {where} matches the model by path and shape "
                         f"(the model's are named like {', '.join(list(flat)[:3])}; the checkpoint's like "
                         f"{', '.join(list(source)[:3])})")
    return loaded, fresh


def load_matching(params, shardings, source: dict[str, Any], where: str) -> tuple[Any, list[str], list[str]]:
    """(params with every matching source parameter loaded, loaded paths, fresh paths).

    Loaded arrays are cast to the target's dtype and placed with the target's sharding.
    """
    loaded, fresh = match(params, source, where)
    flat, flat_shardings = flatten_dict(dict(params), sep="/"), flatten_dict(dict(shardings), sep="/")
    out = dict(flat)
    for name, key in loaded.items():
        value = flat[name]
        out[name] = jax.device_put(np.asarray(jax.device_get(source[key])).astype(value.dtype), flat_shardings[name])
    return unflatten_dict(out, sep="/"), list(loaded), fresh


def summarize(names: list[str]) -> str:
    """'encoder/layer_*/mlp/wi/kernel, ...': layer indices folded, so a deep model's list stays short."""
    folded = list(dict.fromkeys(re.sub(r"layer_\d+", "layer_*", n) for n in names))
    return ", ".join(folded) if folded else "none"


def warm_start(state, shardings, path: str, mesh, workdir: str, log, cfg=None, variables=None) -> Any:
    """`state` with `path`'s matching parameters loaded (in the layout of a model with config `cfg`);
    the loaded and fresh sets are logged and written to `<workdir>/init_from.json`. `variables`:
    a Hugging Face source already loaded."""
    source, where = source_params(path, mesh, cfg, variables)
    params, loaded, fresh = load_matching(state.params, shardings.params, source, where)
    record_init_from(path, where, loaded, fresh, workdir, log)
    return state.replace(params=params)


def record_init_from(path: str, where: str, loaded: list[str], fresh: list[str], workdir: str, log) -> None:
    log(f"init_from {path} ({where}): loaded {len(loaded)} parameters: {summarize(loaded)}")
    log(f"init_from: {len(fresh)} fresh parameters: {summarize(fresh)}")
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "init_from.json"), "w") as f:
            json.dump({"init_from": path, "source": where, "loaded": loaded, "fresh": fresh}, f, indent=1)
