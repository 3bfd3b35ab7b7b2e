"""A profiler trace of a few training steps (`config.profile_steps = "a,b"`: steps a..b).

The trace goes to `<workdir>/profile` (each process its own `process_<i>` folder when there are
several) in the TensorBoard profile plugin's layout; open it with
`tensorboard --logdir <workdir>/profile` (pip install tensorboard tensorboard-plugin-profile) or
`xprof --logdir <workdir>/profile`. Steps count like the logged steps: step s is the s-th update.
Skip the first step (compilation and first-call overheads) unless that is what you want to see.
"""

from __future__ import annotations

import os

import jax


def parse_profile_steps(value) -> tuple[int, int] | None:
    """'' (or None) -> None (off); 'a,b' with 1 <= a <= b -> (a, b); anything else a ValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.split(",") if isinstance(value, str) else None
    try:
        a, b = (int(p) for p in parts)
    except (TypeError, ValueError):
        a = b = None
    if a is None or not 1 <= a <= b:
        raise ValueError(f"config.profile_steps={value!r} must be '' (off) or 'a,b' with integers "
                         "1 <= a <= b: trace steps a..b (e.g. '10,12')")
    return a, b


def profile_dir(workdir: str) -> str:
    """`<workdir>/profile`, or `<workdir>/profile/process_<i>` when several processes trace at once."""
    base = os.path.join(workdir, "profile")
    return base if jax.process_count() == 1 else os.path.join(base, f"process_{jax.process_index()}")


class StepProfiler:
    """Starts `jax.profiler` before step a and stops it after step b, once the results of step b
    are ready (otherwise asynchronous dispatch would end the trace before the work)."""

    def __init__(self, steps: tuple[int, int] | None, workdir: str):
        self.steps, self.workdir, self.active = steps, workdir, False

    def before(self, step: int) -> None:
        """Call before running step `step` (1-based: the update about to be applied)."""
        if self.steps is not None and step == self.steps[0] and not self.active:
            jax.profiler.start_trace(profile_dir(self.workdir))
            self.active = True

    def after(self, step: int, result) -> None:
        """Call after dispatching step `step` with its outputs `result` (blocked on before stopping)."""
        if self.active and step >= self.steps[1]:
            self.stop(result)

    def stop(self, result=None) -> None:
        if self.active:
            jax.block_until_ready(result)
            jax.profiler.stop_trace()
            self.active = False
