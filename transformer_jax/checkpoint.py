"""Checkpoints: the one module that touches Orbax (its API changes often; keep it in one place).

A checkpoint at step s holds the train state after s updates (params, optimiser state, step, rng)
and each process's data-iterator state (JSON), so a restart continues exactly where the run was.
Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it), so a
run killed mid-save leaves the previous checkpoint as the latest complete one. A step that cannot
be read is moved aside to `<directory>/corrupt/<step>` (never deleted) and the one before it is
restored; moved aside, it no longer takes one of the `max_to_keep` places.

A save that cannot fit is refused before Orbax writes anything (`check_space`: the size of the
last step, or of the state, against the free space). One that fails anyway (the disk filled
meanwhile, a quota, a read-only mount) is waited for, reported once as a `CheckpointSaveError`
naming the step that failed, and its temporary directory removed. Orbax's event loops are closed
only once their failed writes have ended (`_drain_before_close`), and the copies of that one
storage error that Orbax's threads log are not printed (`_OrbaxEchoes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys
import threading
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


class CheckpointSpaceError(CheckpointSaveError):
    """A save refused before it started: the file system has less free space than it needs."""


# Errors of the storage, not of the program: a save that meets one says so in one line.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO,
                            errno.EACCES, errno.EPERM})
SPACE_MARGIN = 1.1  # a step may grow a little (metadata, metrics); refuse a save that would not fit


def storage_errno(err: BaseException | None) -> int | None:
    """The OS error number of `err` or of its causes, when it is one of `STORAGE_ERRNOS`: an OSError,
    or TensorStore's error, which carries it as text (`RESOURCE_EXHAUSTED: ... [os_error_code='28']`)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        code = err.errno if isinstance(err, OSError) else None
        if code is None and (found := re.search(r"os_error_code='?(\d+)", str(err))):
            code = int(found.group(1))
        if code in STORAGE_ERRNOS:
            return code
        err = err.__cause__ or err.__context__
    return None


def cause(err: BaseException) -> str:
    """A storage error by its name ("No space left on device (ENOSPC)", whether Python or TensorStore
    raised it); anything else as `first_line`."""
    code = storage_errno(err)
    return f"{os.strerror(code)} ({errno.errorcode[code]})" if code is not None else first_line(err)


def tree_nbytes(tree: Any) -> int:
    """Bytes of the arrays in `tree` (their global size)."""
    return sum(int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree_util.tree_leaves(tree))


def disk_bytes(path: str) -> int:
    """Bytes that the files under `path` occupy on disk (allocated blocks where the OS says)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed meanwhile
                continue
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.0f} kB"


def space_shortfall(directory: str, needed: int) -> tuple[int, int] | None:
    """(bytes needed, bytes free) when the file system of `directory` has fewer than `needed`
    bytes free for this user; None when the save fits."""
    free = shutil.disk_usage(directory).free
    return (needed, free) if free < needed else None


class _OrbaxEchoes(logging.Filter):
    """Drops the tracebacks that Orbax's threads log (`absl`, `logging.exception`) for a storage error
    (`storage_errno`): one ENOSPC is logged by each writer thread, the commit thread and the
    finalize wait. The save raises that error itself, and the Checkpointer reports it once.
    Installed only while a save is in flight; any other error (a bug) is logged as before."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and storage_errno(record.exc_info[1]) is not None)


def _drain_before_close(coro):
    """Orbax's `asyncio_utils._run_sync_via_new_loop` with one change: when `coro` fails, the tasks it
    leaves behind run to the end (their errors retrieved) before the loop is closed.

    Orbax runs each background write in a fresh event loop and closes it as soon as the coroutine
    ends. When one TensorStore write fails (ENOSPC), `asyncio.gather` raises at once while its sibling
    tasks still await their writes; the loop is closed under them, so each write that ends later
    calls `call_soon_threadsafe` on a closed loop ("RuntimeError: Event loop is closed", printed as
    unraisable) and each task's error is "never retrieved": ~50 tracebacks for one full disk, some
    printed after the run has ended."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(coro)
        except Exception:
            if left := asyncio.all_tasks(loop):
                loop.run_until_complete(_finish(left, DRAIN_TIMEOUT_S))
            raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()


DRAIN_TIMEOUT_S = 60.0  # local writes end in milliseconds; a task stuck longer (a barrier) is cancelled


async def _finish(tasks: set[asyncio.Task], timeout: float) -> None:
    """Let `tasks` end (at most `timeout` seconds, then cancel the rest) and retrieve their errors."""
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in done | pending:
        if not task.cancelled():
            task.exception()  # retrieved: not logged as "never retrieved"


def _drain_orbax_loops() -> None:
    """Install `_drain_before_close` in Orbax (once; an Orbax without that function is left alone)."""
    from orbax.checkpoint._src import asyncio_utils

    if getattr(asyncio_utils, "_run_sync_via_new_loop", None) not in (None, _drain_before_close):
        asyncio_utils._run_sync_via_new_loop = _drain_before_close


def _join_orbax_writers(timeout: float) -> None:
    """Wait for Orbax's writer threads still running: after the first failure, Orbax's commit thread
    stops waiting for the others, which may still be ending (and logging) when it reports."""
    from orbax.checkpoint._src.futures import future as orbax_future

    writer = getattr(orbax_future, "_SignalingThread", None)
    for thread in threading.enumerate():
        if writer is not None and isinstance(thread, writer) and thread is not threading.current_thread():
            threading.Thread.join(thread, timeout)  # its own join() re-raises its error; ours is reported


def _existing(path: str) -> str:
    """`path` or its nearest existing parent (the directory may not be created yet on this host)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


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
        self._async = async_save
        self._pending: int | None = None  # the step of the asynchronous save in flight
        self._step_bytes: dict[int, int] = {}  # on-disk size of committed steps (for check_space)
        self._echoes = _OrbaxEchoes()
        _drain_orbax_loops()

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

        Every process must call this (collective). Returns whether a save was started. Waits for
        the previous save first (Orbax would; here its failure is reported as its own step), and
        refuses a save that cannot fit (`check_space`) before anything is written.
        """
        self.wait()
        if step in self._manager.all_steps():
            return False
        self.check_space(step, state)
        data = {"processes": _allgather_json(data_state)}
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data)})
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        self._hush(True)
        try:
            with _quiet_unscored(bool(self.best_metric) and metrics is None), self._saving(step):
                started = self._manager.save(step, args=args, metrics=metrics, force=force)
            self._pending = step if started and self._async else None
        finally:
            if self._pending is None:
                self._hush(False)
        return started

    def check_space(self, step: int, state: Any) -> None:
        """Raise `CheckpointSpaceError` (naming the directory, the bytes needed and free) when the
        save of `step` would not fit: it needs the on-disk size of the latest step (or, before the
        first, the bytes of `state`) plus `SPACE_MARGIN`; old steps are deleted only after it is
        committed. Collective: every process refuses when one is short (no process hangs in the save)."""
        latest = self.latest_step()
        basis, what = tree_nbytes(state), "the train state's bytes"
        if latest is not None:
            if latest not in self._step_bytes:
                self._step_bytes[latest] = disk_bytes(os.path.join(self.directory, str(latest)))
            if self._step_bytes[latest] >= basis:
                basis, what = self._step_bytes[latest], f"the size of step {latest}"
        needed = int(basis * SPACE_MARGIN)
        short = space_shortfall(_existing(self.directory), needed)
        shorts = [(i, s) for i, s in enumerate(_allgather_json(short)) if s]
        if shorts:
            index, (needed, free) = shorts[0]
            where = f" on process {index}" if jax.process_count() > 1 else ""
            raise CheckpointSpaceError(
                f"saving the checkpoint of step {step} in {self.directory} needs about {_mb(needed)} "
                f"({what} plus {SPACE_MARGIN - 1:.0%}) but {_mb(free)} are free{where}; nothing was written; "
                f"{self._aftermath(step)}")

    def _aftermath(self, step: int | None) -> str:
        """What the user has after a failed save of `step`, and what to do."""
        try:
            kept = [s for s in committed_steps(self.directory) if s != step]
        except Exception:
            kept = []
        last = f"the last complete checkpoint (step {kept[-1]}) is intact" if kept else "no checkpoint is complete"
        return (f"{last}; free space (or lower keep_checkpoints, pruned at the next start) "
                "and run the same command to resume")

    def _hush(self, on: bool) -> None:
        """Install (or remove) `_OrbaxEchoes` on Orbax's logger (absl's)."""
        logger = logging.getLogger("absl")
        logger.addFilter(self._echoes) if on else logger.removeFilter(self._echoes)

    @contextlib.contextmanager
    def _saving(self, step: int | None):
        """A failed save of `step` (raised now, or found by waiting for an asynchronous one): once
        Orbax's writer threads have ended, remove its temporary directory, and turn a storage error
        (disk full, quota, read-only) into one named line; any other error (a bug) is raised as it is."""
        try:
            yield
        except Exception as err:
            self._settle()
            _remove_tmp_dirs(self.directory)
            if storage_errno(err) is None:
                raise
            log.debug("saving step %s in %s failed", step, self.directory, exc_info=err)
            which = f"of step {step} " if step is not None else ""
            raise CheckpointSaveError(f"saving the checkpoint {which}in {self.directory} failed: {cause(err)}; "
                                      f"{self._aftermath(step)}") from None

    def _settle(self) -> None:
        """After a failure: wait for the rest of Orbax's save (its error is the one being reported;
        no thread of it writes or logs after this), and re-read the steps on disk (Orbax already
        forgot the steps it meant to delete once the failed one was committed)."""
        with contextlib.suppress(Exception):
            self._manager.wait_until_finished()
        _join_orbax_writers(DRAIN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            self._manager.reload()

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
        """Block until pending asynchronous saves are committed (a failure names its step)."""
        step, self._pending = self._pending, None
        try:
            with self._saving(step):
                self._manager.wait_until_finished()
        finally:
            self._hush(False)

    def close(self) -> None:
        try:
            self.wait()
        except BaseException:
            with contextlib.suppress(Exception):  # the same failure again: reported once, above
                self._manager.close()
            raise
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
