"""A wall-clock training budget (`config.budget_minutes`) that survives restarts exactly.

Comparing attention variants at equal *time* rather than equal steps is the fair test of an
efficient variant (a faster step buys more updates). What counts: the wall-clock time of the
training loop itself — data, steps, logging and checkpoint saves — from the moment the train step
is compiled. Not counted: building the state, compiling the step, periodic evaluation (a
measurement: charging it would make a slow variant pay more for being looked at equally often)
and the end-of-run test evaluation.

Exact resume: at every checkpoint the elapsed training time is recorded against that step in
`<workdir>/budget.json` (written atomically). A restarted run restores a checkpoint at step s and
continues from the time recorded for s, so time spent after the last checkpoint (steps that
will be redone) is not charged twice, and the run ends after the same training time as an
uninterrupted one. The stop decision is taken on every process and OR-ed across them by the
loop, so all processes stop after the same step.
"""

from __future__ import annotations

import json
import math
import os
import contextlib
import time
from collections.abc import Callable, Iterator

from transformer_jax.train.logs import write_json_atomic

BUDGET_FILE = "budget.json"


def check_minutes(config) -> None:
    """`config.budget_minutes` and `config.eval_every_minutes`: numbers >= 0 (0: off)."""
    for name in ("budget_minutes", "eval_every_minutes"):
        value = config.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"config.{name}={value!r} must be a number >= 0 (minutes of training time; 0 = off)")


class Clock:
    """Training time spent in a workdir: `elapsed()`, `expired()`, `record(step)` at each checkpoint,
    and `eval_due()` every `eval_every_minutes` of it (equal-time evaluation for variants whose steps
    take different times).

    `now` is injectable for tests. Only process 0 (`writer=True`) writes the file.
    """

    def __init__(self, workdir: str, budget_minutes: float, start_step: int, *, eval_every_minutes: float = 0.0,
                 writer: bool = True, now: Callable[[], float] = time.monotonic):
        self.path = os.path.join(workdir, BUDGET_FILE)
        self.budget_s = 60.0 * float(budget_minutes)
        self.eval_s = 60.0 * float(eval_every_minutes)
        self.writer, self._now = writer, now
        self._by_step = _read(self.path)
        self._carried = self._by_step.get(start_step, 0.0)  # training time before this sitting
        self._t0: float | None = None
        self._paused_s = 0.0  # time inside `paused()` this sitting
        self._eval_mark = self._mark()

    @property
    def timed(self) -> bool:
        """Whether decisions depend on the clock (a budget or time-based evals). The loop then waits
        for each step to finish before reading it: with asynchronous dispatch the host would
        otherwise run ahead until the next log and overshoot the budget by that many steps."""
        return self.budget_s > 0 or self.eval_s > 0

    def start(self) -> None:
        """Start counting (after the step is compiled)."""
        self._t0 = self._now()

    def elapsed(self) -> float:
        """Seconds of training time, this sitting and the ones before the restored checkpoint."""
        return self._carried + (0.0 if self._t0 is None else self._now() - self._t0 - self._paused_s)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not training time (periodic evaluation)."""
        t = self._now()
        try:
            yield
        finally:
            self._paused_s += self._now() - t

    def remaining(self) -> float | None:
        """Seconds of the budget left (None without a budget)."""
        return self.budget_s - self.elapsed() if self.budget_s > 0 else None

    def expired(self) -> bool:
        return self.budget_s > 0 and self.elapsed() >= self.budget_s

    def spent_before(self) -> bool:
        """The budget was used up before this sitting (a finished run restarted): train no step."""
        return self.budget_s > 0 and self._carried >= self.budget_s

    def _mark(self) -> int:
        return int(self.elapsed() // self.eval_s) if self.eval_s > 0 else 0

    def eval_due(self) -> bool:
        """Whether another `eval_every_minutes` of training time has passed since the last eval."""
        return self.eval_s > 0 and self._mark() > self._eval_mark

    def evaluated(self) -> None:
        """An eval ran because some process's `eval_due()` was true (the loop ORs them): advance the
        mark by at least one, so a process whose clock lags does not ask again just after."""
        self._eval_mark = max(self._eval_mark + 1, self._mark())

    def record(self, step: int) -> float:
        """Note the elapsed time at `step` (a checkpoint is being saved there); returns it."""
        elapsed = self.elapsed()
        self._by_step[step] = elapsed
        if self.writer:
            write_json_atomic(self.path, {"budget_s": self.budget_s,
                                      "elapsed_s": {str(k): v for k, v in sorted(self._by_step.items())}})
        return elapsed


def evaluates(config) -> bool:
    """Whether the run evaluates periodically (by steps or by training time)."""
    return bool(config.eval_every or config.get("eval_every_minutes", 0.0))


def _read(path: str) -> dict[int, float]:
    """{step: elapsed seconds} from budget.json ({} without one); a corrupt file is a named error."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is corrupt ({err}); it records the training time per checkpoint: restore "
                         "it, or delete it to count the budget from zero") from None
    elapsed = data.get("elapsed_s") if isinstance(data, dict) else None
    try:
        if not isinstance(elapsed, dict):
            raise TypeError
        return {int(k): float(v) for k, v in elapsed.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{path} is corrupt: want {{\"elapsed_s\": {{step: seconds}}}}, got "
                         f"{json.dumps(data)[:80]}; restore it, or delete it to count the budget from zero") from None


def check_file(workdir: str) -> None:
    """Read `<workdir>/budget.json` once before anything compiles (a named error if corrupt)."""
    _read(os.path.join(workdir, BUDGET_FILE))


def best_params(s, ckpt, state, step: int):
    """(params, step) to report on the test split: the best checkpoint by `config.best_metric` when
    one was scored (model selection on validation: a budget ends at whatever step the time allows,
    not necessarily the best one), else the final state's."""
    from transformer_jax.train.state import abstract_state

    best = ckpt.best_step()
    if best is None or best == step:
        return state.params, step
    restored = ckpt.restore(abstract_state(state, s.shardings), step=best)
    return restored[0].params, best
