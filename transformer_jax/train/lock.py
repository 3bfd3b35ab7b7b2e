"""One trainer per workdir: a lock file naming its holder (pid, host, start time).

Two trainers on one workdir interleave `metrics.jsonl` and overwrite each other's checkpoints
(or crash inside Orbax). `train` therefore takes `<workdir>/train.lock` before it writes anything
there and removes it when it ends. The file appears with its whole content at once (written
beside it, then hard-linked into place, which fails if a lock exists), so a reader never sees a
half-written holder. A lock left by a killed process is detected (same host, pid no longer
running) and taken over; one held on another host cannot be checked from here, so the error
says which file to remove once that trainer is known to be gone. Multi-host: process 0 takes the
lock for the job, and every process learns whether it did.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

LOCK = "train.lock"


class WorkdirLocked(ValueError):
    """Another live trainer holds the workdir (a ValueError: the CLI prints it as one `error:` line)."""


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _read(path: Path) -> dict | None:
    """The holder recorded in `path`; None when the file is gone; {} when it is unreadable."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _alive(pid) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _stale(holder: dict) -> bool:
    """Left by a process of this host that no longer runs (or an unreadable file)."""
    return not holder or (holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")))


def _create(path: Path, holder: dict) -> bool:
    """Put `holder` at `path` atomically unless a lock is there; whether it did."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(holder) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(path: Path, seen: dict) -> None:
    """Move aside the stale lock `seen` (if it is still the one at `path`)."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != seen:  # another process replaced it in between: put theirs back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def acquire(workdir: str | os.PathLike) -> Path:
    """Take `<workdir>/train.lock` for this process; raises `WorkdirLocked` naming a live holder."""
    path = Path(workdir) / LOCK
    me = _holder()
    for _ in range(5):
        if _create(path, me):
            return path
        holder = _read(path)
        if holder is None:  # released in between
            continue
        if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
            return path  # this process already holds it (a second `train` call in one process)
        if not _stale(holder):
            where = "this host" if holder.get("host") == me["host"] else f"host {holder.get('host')!r}"
            raise WorkdirLocked(
                f"--workdir={os.fspath(workdir)!r} is in use by another trainer: pid {holder.get('pid')} on "
                f"{where}, since {holder.get('started', '?')} (lock file {path}); wait for it to end or stop "
                "it; if no trainer runs there any more, remove the lock file")
        _take_over(path, holder)
    raise WorkdirLocked(f"--workdir={os.fspath(workdir)!r}: could not take the lock file {path} "
                        "(other processes keep replacing it)")


def release(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike):
    """Hold the workdir's lock for the block (process 0 takes it; every process raises if it could not)."""
    import jax

    path, error = None, None
    if jax.process_index() == 0:
        try:
            path = acquire(workdir)
        except WorkdirLocked as err:
            error = err
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        refused = bool(np.asarray(multihost_utils.broadcast_one_to_all(np.array(error is not None))))
        if refused and error is None:
            error = WorkdirLocked(f"--workdir={os.fspath(workdir)!r} is in use by another trainer "
                                  "(process 0 names the holder)")
    if error is not None:
        raise error
    try:
        yield path
    finally:
        if path is not None:
            release(path)
