"""Checkpoints: the one module that touches Orbax (its API changes often; keep it in one place).

A checkpoint at step s holds the train state after s updates (params, optimiser state, step, rng)
and each process's data-iterator state (JSON), so a restart continues exactly where the run was.
Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it), so a
run killed mid-save leaves the previous checkpoint as the latest complete one. A step that cannot
be read is moved aside to `<directory>/corrupt/<step>` (never deleted) and the one before it is
restored; moved aside, it no longer takes one of the `max_to_keep` places.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

log = logging.getLogger(__name__)

STATE, DATA = "state", "data"
CORRUPT = "corrupt"  # unreadable steps are moved to <directory>/corrupt/<step>


def committed_steps(directory: str | os.PathLike) -> list[int]:
    """The steps with a checkpoint in `directory`, read from disk (nothing is created)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def first_line(err: BaseException, limit: int = 160) -> str:
    """`TypeName: first line of the message`, cut to `limit` characters (TensorStore errors carry
    the whole array spec, thousands of lines)."""
    text = (str(err).strip().splitlines() or [""])[0]
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CheckpointSaveError(ValueError):
    """A save failed (disk full, read-only, quota): one line; the last complete checkpoint is intact.
    A ValueError so that the CLI prints it as one `error:` line."""


def _remove_tmp_dirs(directory: str) -> None:
    """Orbax's temporary directories of a save that failed (process 0)."""
    if jax.process_index() != 0:
        return
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


class _DropUnscoredWarning(logging.Filter):
    """Orbax warns on every save without metrics once a best metric is tracked; ours are deliberate
    (only eval steps are scored)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


@contextlib.contextmanager
def _quiet_unscored(active: bool):
    absl_logger = logging.getLogger("absl")
    flt = _DropUnscoredWarning()
    if active:
        absl_logger.addFilter(flt)
    try:
        yield
    finally:
        absl_logger.removeFilter(flt)


def _allgather_json(obj: Any) -> list[Any]:
    """Every process's JSON-serialisable `obj`, as a list indexed by process (a no-op on one process)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: raw.size] = raw
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), -1)
    lengths = np.asarray(lengths).reshape(-1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(gathered, lengths)]


class Checkpointer:
    """Periodic, asynchronous checkpoints; keeps the last `max_to_keep` and the best by `best_metric`.

    `restore` picks the latest complete checkpoint and falls back to earlier ones (with a warning)
    when one cannot be read. Restoring takes target shardings, so a checkpoint saved on one mesh
    loads onto another.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "min", async_save: bool = True):
        if best_mode not in ("min", "max"):
            raise ValueError(f"checkpoint best_mode={best_mode!r} is not one of min, max")
        self.directory = os.path.abspath(os.fspath(directory))
        self.best_metric, self.best_mode, self.max_to_keep = best_metric, best_mode, max_to_keep
        policies: list[pp.PreservationPolicy] = [pp.LatestN(max_to_keep)]
        best_fn = None
        if best_metric:
            best_fn = lambda m: m[best_metric]  # noqa: E731
            policies.append(pp.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
        # `best_fn` makes Orbax write the metrics; `preservation_policy` alone decides what is deleted.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies), best_fn=best_fn, best_mode=best_mode,
            create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA))

    # -- queries -----------------------------------------------------------------------------------
    def all_steps(self) -> Sequence[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric` (None without a metric or scored checkpoints)."""
        if not self.best_metric:
            return None
        self.wait()
        scored = [(m[self.best_metric], s) for s in self.all_steps()
                  if (m := self._manager.metrics(s)) and self.best_metric in m]
        if not scored:
            return None
        return (min(scored) if self.best_mode == "min" else max(scored))[1]

    # -- save / restore ----------------------------------------------------------------------------
    def save(self, step: int, state: Any, data_state: Any = None, *, metrics: dict | None = None,
             force: bool = True) -> bool:
        """Start an (asynchronous) save of `state` and this process's `data_state` at `step`.

        Every process must call this (collective). Returns whether a save was started.
        """
        if step in self._manager.all_steps():
            return False
        data = {"processes": _allgather_json(data_state)}
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data)})
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        with _quiet_unscored(bool(self.best_metric) and metrics is None), self._saving(step):
            return self._manager.save(step, args=args, metrics=metrics, force=force)

    @contextlib.contextmanager
    def _saving(self, step: int | None):
        """Turn a failed save (raised now, or by an earlier asynchronous one) into one named line and
        remove its temporary directory."""
        try:
            yield
        except Exception as err:
            _remove_tmp_dirs(self.directory)
            try:
                kept = [s for s in committed_steps(self.directory) if s != step]
            except Exception:
                kept = []
            last = f"the last complete checkpoint (step {kept[-1]}) is intact" if kept else "no checkpoint is complete"
            which = f"of step {step} " if step is not None else ""
            raise CheckpointSaveError(f"saving the checkpoint {which}in {self.directory} failed: {first_line(err)}; "
                                      f"{last}; free space (or lower keep_checkpoints, pruned at the next start) "
                                      "and run the same command to resume") from None

    def prune(self) -> list[int]:
        """Delete the steps beyond the last `max_to_keep` (and the best one): a run restarted with a
        lower `keep_checkpoints` frees that space before its next save, not after. Returns the deleted
        steps. Called by `train` only (eval and decode open checkpoints and must delete nothing)."""
        self.wait()
        steps = self.all_steps()
        keep = set(steps[-self.max_to_keep:]) if self.max_to_keep else set(steps)
        best = self.best_step()
        if best is not None:
            keep.add(best)
        doomed = [s for s in steps if s not in keep]
        for s in doomed:
            self._manager.delete(s)
        if doomed:
            self._manager.reload()
        return doomed

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, int] | None:
        """(state, this process's data state, step) from `step` or the latest readable checkpoint.

        `abstract_state` holds `jax.ShapeDtypeStruct`s with the *target* shardings (see
        `train.state.abstract_state`), which may come from a different mesh than the save.
        Returns None when there is no checkpoint.
        """
        self.wait()
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        for candidate in steps:
            try:
                restored = self._manager.restore(candidate, args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
            except Exception as err:  # a partial or corrupt checkpoint: move it aside, try the one before
                if step is not None:
                    raise
                self._set_aside(candidate, err)
                continue
            processes = (restored[DATA] or {}).get("processes") or [None]
            index = jax.process_index() if len(processes) == jax.process_count() else 0
            return restored[STATE], processes[index], candidate
        return None

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """(the `params` of the train state at `step` or the latest, step), nothing else read.

        For starting another run from this one (`init_from`): its optimiser state may have another
        structure than today's code builds, and a source's checkpoints are never moved aside; an
        unreadable one raises."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        item = {"params": abstract_params}
        restored = self._manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)}))
        return restored[STATE]["params"], step

    def _set_aside(self, step: int, err: BaseException) -> None:
        """Move unreadable `step` to `<directory>/corrupt/<step>` (process 0) and say so in one line."""
        log.debug("checkpoint step %d in %s is unreadable", step, self.directory, exc_info=err)
        where = "left in place"
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            dst = os.path.join(self.directory, CORRUPT, str(step))
            suffix = 1
            while os.path.exists(dst):
                dst, suffix = os.path.join(self.directory, CORRUPT, f"{step}.{suffix}"), suffix + 1
            try:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.rename(src, dst)
                where = f"moved to {dst}"
            except OSError as move_err:
                where = f"left in place ({first_line(move_err)})"
            print(f"warning: checkpoint step {step} is unreadable ({first_line(err)}); {where}; "
                  "trying the previous one", file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed."""
        with self._saving(None):
            self._manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
