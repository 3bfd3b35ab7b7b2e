"""Logging: `metrics.jsonl` + TensorBoard, and progress on a terminal (tqdm) or in a log (lines)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


class MetricsWriter:
    """`metrics.jsonl` (whole lines, flushed, so a kill never leaves a torn record) + TensorBoard.

    After a resume, steps between the last checkpoint and the kill are logged again; readers
    should keep the last record of each step. Only process 0 writes.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled and jax.process_index() == 0
        self._file = self._tb = None
        if self.enabled:
            self._file = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except Exception as err:  # tensorboard is a convenience; never fail training for it
                print(f"warning: tensorboardX unavailable ({err}); writing metrics.jsonl only", file=sys.stderr)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _jsonable(v):
    v = np.asarray(v) if isinstance(v, (jax.Array, np.ndarray, np.generic)) else v
    if isinstance(v, np.ndarray):
        v = v.item() if v.ndim == 0 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(workdir: str) -> dict[int, dict]:
    """The last record of each step in `workdir/metrics.jsonl`."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            if line.endswith("\n"):
                record = json.loads(line)
                out[record["step"]] = record
    return out


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` whole or not at all; a failed write (disk full) leaves no temporary
    file and names `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(err.errno, err.strerror, path) from None


def write_json_atomic(path: str, obj: Any) -> None:
    """`obj` as indented JSON, through `write_text_atomic`."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def format_duration(seconds: float) -> str:
    """3725.2 -> '1:02:05'."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(step: int, total: int, loss: float, rate: float, unit: str, eta_s: float | None) -> str:
    """One plain progress line for logs: 'step 50/800 | loss 2.3456 | 1,234 tokens/s | ETA 0:03:12'."""
    eta = "?" if eta_s is None else format_duration(eta_s)
    return f"step {step}/{total} | loss {loss:.4f} | {rate:,.0f} {unit}/s | ETA {eta}"


class Progress:
    """A tqdm bar on a terminal (stderr); one `progress_line` per logged step when stdout is not a
    terminal (a log file, a pipe, a batch job), so progress is never invisible. Process 0 only."""

    def __init__(self, start: int, total: int, unit: str, bar: bool | None = None,
                 budget_left: Callable[[], float | None] | None = None):
        main = jax.process_index() == 0
        self.start, self.total, self.unit, self.t0 = start, total, unit, time.time()
        self.budget_left = budget_left  # seconds of a time budget left (None: no budget): caps the ETA
        self.bar = None
        if main and (sys.stderr.isatty() if bar is None else bar):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
        self.lines = main and not (self.bar is not None and sys.stdout.isatty())

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", **{f"{self.unit}/s": f"{rate:.0f}"})
        if self.lines:
            done = step - self.start
            eta = (self.total - step) * (time.time() - self.t0) / done if done > 0 else None
            left = self.budget_left() if self.budget_left is not None else None
            if left is not None:  # the run ends at the budget if that comes first
                eta = max(left, 0.0) if eta is None else min(eta, max(left, 0.0))
            print(progress_line(step, self.total, loss, rate, self.unit, eta), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
