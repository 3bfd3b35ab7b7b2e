"""LoRA in the training loop (config section `lora`; the adapters themselves are transformer_jax/lora.py).

    lora.rank (0 = off) · lora.alpha · lora.targets (projection names or path regexes)
    lora.save_adapters_only (default True): checkpoints hold the adapters, not the base

With LoRA on, the train state's `params` are the adapters (A, B per targeted projection) plus the
parameters `init_from` leaves fresh (a new pooler and classifier have nothing to adapt, so they are
trained in full, like PEFT's `modules_to_save`); `opt_state` is theirs alone; `frozen` is the base:
the model's initialisation with `init_from`'s matching parameters loaded over it. The train step
runs the model on `merge_lora(stop_gradient(frozen), params)`; eval, BLEU and decode run on the
merged parameters (`eval_params`); at the end `<workdir>/adapters/` gets adapters.safetensors and
lora_config.json (`lora.load_adapters` + `tj.merge_lora` fold them into the base for serving).

Why adapters-only checkpoints by default: the base never changes, so writing it at every
checkpoint multiplies the disk by `keep_checkpoints` for nothing, and the point of LoRA is that a
fine-tune is small. The base is re-derived on every start (seeded init, then `init_from`), which is
deterministic, and checked against the fingerprint (per-parameter sums of |w|) recorded in
`<workdir>/lora.json` on the first start, so a resume never silently adapts a different base
(e.g. an `init_from` workdir that trained on). `lora.save_adapters_only=False` writes the base into
every checkpoint instead: the workdir then resumes and evaluates without the `init_from` source.
Both resume exactly and restore onto any mesh (the base is placed with the same shardings).
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict

from transformer_jax import lora as lora_lib
from transformer_jax.train.state import TrainState, abstract_train_state, create_train_state
from transformer_jax.train.warm_start import load_matching, match, record_init_from, source_params, summarize

RECORD = "lora.json"  # <workdir>/lora.json: the LoRA settings, counts and the base's fingerprint
EXPORT = "adapters"  # <workdir>/adapters/: adapters.safetensors + lora_config.json at the end of a run


def lora_config(config) -> lora_lib.LoraConfig | None:
    """The run's LoraConfig, or None when LoRA is off (no `lora` section, or rank 0)."""
    return lora_lib.from_config(config.get("lora", None))


def adapters_only(config) -> bool:
    return bool(lora_config(config)) and bool(config.lora.get("save_adapters_only", True))


def check_config(config) -> None:
    """The `lora` section's named errors (no model needed): rank < 0, alpha <= 0, bad targets, a
    non-boolean save_adapters_only, and `freeze` beside LoRA (which freezes everything else already)."""
    cfg = lora_config(config)
    if cfg is None:
        return
    flag = config.lora.get("save_adapters_only", True)
    if not isinstance(flag, bool):
        raise ValueError(f"config.lora.save_adapters_only={flag!r} must be True or False")
    patterns = tuple(config.get("freeze", ()) or ())
    if patterns:
        raise ValueError(f"config.freeze={patterns!r} with config.lora.rank={cfg.rank}: LoRA already freezes "
                         "every parameter outside the adapters; leave config.freeze empty")


# ----------------------------------------------------------------------------------------------
# The train state


def create_state(config, model, tx: optax.GradientTransformation, shapes: dict, mesh, task, workdir: str,
                 log, *, resuming: bool) -> tuple[TrainState, TrainState]:
    """(state, shardings) of a LoRA run, sharded on `mesh`: fresh adapters, `frozen` the base
    (`init_from` loaded into the seeded initialisation), parameters `init_from` leaves fresh
    trained in full. Named errors (targets that match nothing, an `init_from` whose parameters do
    not fit the model, a changed base or LoRA setting on resume) come before anything compiles."""
    cfg = lora_config(config)
    check_record(config, workdir, resuming)
    abstract, _ = abstract_train_state(model, tx, shapes, mesh, task=task)
    source = where = None
    fresh: list[str] = []
    if config.get("init_from", ""):
        source, where = source_params(config.init_from, mesh, getattr(model, "cfg", None))
        _, fresh = match(abstract.params, source, where)
    lora_lib.targeted(abstract.params, cfg, fresh)  # the named error, on shapes only
    state, shardings = create_train_state(model, tx, shapes, mesh, seed=config.seed, task=task, lora=cfg,
                                          full=fresh)
    if source is not None:
        frozen, loaded, fresh = load_matching(state.frozen, shardings.frozen, source, where)
        state = state.replace(frozen=frozen)
        if not resuming:
            record_init_from(config.init_from, where, loaded, fresh, workdir, log)
    else:
        log(f"lora: no init_from: the adapters adapt the seeded random initialisation (seed {config.seed})")
    counts = counts_of(state, cfg, fresh)
    log(describe(cfg, counts))
    check_base(config, workdir, state.frozen, resuming, counts)
    return state, shardings


def counts_of(state: TrainState, cfg: lora_lib.LoraConfig, full: list[str]) -> dict[str, Any]:
    """Trainable (factors, parameters trained in full), frozen (the model's parameters not trained in
    full), the model's size, and optimiser-state bytes."""
    sizes = {k: int(np.prod(np.shape(v))) for k, v in flatten_dict(dict(state.params), sep="/").items()}
    in_full = sum(n for k, n in sizes.items() if k in set(full))
    model = int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(state.frozen)))
    return {"rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets),
            "adapted_projections": len(lora_lib._adapter_leaves(state.params)),
            "trainable": sum(sizes.values()), "factors": sum(sizes.values()) - in_full, "trained_in_full": in_full,
            "full": sorted(full), "frozen": model - in_full, "model": model,
            "optimizer_state_bytes": _bytes(state.opt_state), "trainable_bytes": _bytes(state.params)}


def _bytes(tree) -> int:
    return int(sum(np.dtype(x.dtype).itemsize * math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def describe(cfg: lora_lib.LoraConfig, c: dict[str, Any]) -> str:
    """One log line: what trains, what is frozen, what the optimiser holds."""
    full = f" + {c['trained_in_full']:,} trained in full ({summarize(c['full'])})" if c["full"] else ""
    return (f"lora: rank {cfg.rank}, alpha {cfg.alpha:g}, targets {', '.join(cfg.targets)} on "
            f"{c['adapted_projections']} projections; trainable {c['trainable']:,} parameters "
            f"({c['factors']:,} in adapters{full}), frozen {c['frozen']:,} of the model's {c['model']:,}; "
            f"optimiser state {c['optimizer_state_bytes']:,} bytes")


# ----------------------------------------------------------------------------------------------
# The record in the workdir: settings and the base's fingerprint, checked on resume


def fingerprint(frozen) -> dict[str, float]:
    """{path: sum |w|} of the base, computed where each parameter lives (sharded, no gather)."""
    sums = jax.device_get(jax.tree.map(lambda x: jnp.sum(jnp.abs(x.astype(jnp.float32))), frozen))
    return {k: float(v) for k, v in flatten_dict(dict(sums), sep="/").items()}


def _settings(config) -> dict[str, Any]:
    cfg = lora_config(config)
    return {"lora": cfg.to_dict() if cfg else None, "save_adapters_only": adapters_only(config)}


def check_record(config, workdir: str, resuming: bool) -> None:
    """On resume: LoRA on or off, its rank/alpha/targets and save_adapters_only as when the
    checkpoints were written (else restoring would misread them); a named error otherwise."""
    path = os.path.join(workdir, RECORD)
    if not resuming:
        return
    before = json.load(open(path)) if os.path.exists(path) else {"lora": None, "save_adapters_only": False}
    before = {k: before.get(k) for k in ("lora", "save_adapters_only")}
    now = _settings(config)
    if before != now:
        raise ValueError(f"config.lora: this workdir's checkpoints were written with {before}, the config asks for "
                         f"{now}; resume with the same lora settings or use a new workdir")


def check_base(config, workdir: str, frozen, resuming: bool, counts: dict[str, Any]) -> None:
    """Write `lora.json` on the first start; on resume with adapters-only checkpoints, check that
    the re-derived base is the one the adapters were trained on."""
    path = os.path.join(workdir, RECORD)
    prints = fingerprint(frozen)
    if resuming and adapters_only(config) and os.path.exists(path):
        before = json.load(open(path)).get("fingerprint", {})
        changed = [k for k in before if k not in prints
                   or not math.isclose(before[k], prints[k], rel_tol=1e-5, abs_tol=1e-6)]
        if changed:
            raise ValueError(f"config.init_from={config.get('init_from', '')!r}: the base parameters differ from "
                             f"those this workdir's adapters were trained on ({summarize(changed)}); the checkpoints "
                             "hold adapters only (lora.save_adapters_only=True), so they need the same base")
        return
    if not resuming and jax.process_index() == 0:
        record = {**_settings(config), "init_from": config.get("init_from", ""), **counts, "fingerprint": prints}
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------
# Checkpoints, evaluation, export


class AdaptersOnly:
    """A Checkpointer that leaves the frozen base out of each save and puts `base` back into each
    restore (everything else is the wrapped Checkpointer's)."""

    def __init__(self, inner, base):
        self._inner, self._base = inner, base

    def save(self, step: int, state: TrainState, data_state: Any = None, **kwargs) -> bool:
        return self._inner.save(step, state.replace(frozen=None), data_state, **kwargs)

    def restore(self, abstract_state: TrainState, step: int | None = None):
        restored = self._inner.restore(abstract_state.replace(frozen=None), step)
        if restored is None:
            return None
        state, data_state, step = restored
        return state.replace(frozen=self._base), data_state, step

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def merged_params(cfg: lora_lib.LoraConfig, state: TrainState, shardings: TrainState):
    """base + (alpha/r)·AB (and the parameters trained in full), placed like the base."""
    leaves, treedef = jax.tree_util.tree_flatten(shardings.frozen)
    return _merger(cfg, treedef, tuple(leaves))(state.frozen, state.params)


@functools.lru_cache(maxsize=8)
def _merger(cfg: lora_lib.LoraConfig, treedef, shardings: tuple):
    """The merge compiled once per run (each periodic eval calls it), not once per call."""
    placed = jax.tree_util.tree_unflatten(treedef, shardings)
    return jax.jit(lambda frozen, adapters: lora_lib.merge_lora(frozen, adapters, cfg), out_shardings=placed)


def export(cfg: lora_lib.LoraConfig, state: TrainState, workdir: str, log) -> str:
    """Write `<workdir>/adapters/` (adapters.safetensors + lora_config.json): the adapters alone."""
    params = state.params
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    path = os.path.join(workdir, EXPORT)
    if jax.process_index() == 0:
        lora_lib.save_adapters(path, params, cfg)
        size = os.path.getsize(os.path.join(path, lora_lib.ADAPTER_FILE))
        log(f"lora: adapters written to {path} ({size:,} bytes); fold them in with tj.merge_lora")
    return path
