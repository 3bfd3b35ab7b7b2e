"""The training loop: the impure edge around the pure step (data, logging, checkpoints, signals).

    build (train/build.py) -> restore latest checkpoint (state + data position), or init_from
    -> compiled step -> for each step: next batch, step, log, checkpoint, eval
       (until num_train_steps, or config.budget_minutes of training time: train/budget.py)
    -> the task's end-of-run evaluation (train/evaluate.py) of the best checkpoint by
       config.best_metric when eval scored one, else of the final state

Exact resume: the step is deterministic, the dropout rng is `fold_in(rng, step)`, and the
checkpoint holds the data iterator's position, so a run killed at any point (SIGKILL included)
and restarted reproduces the uninterrupted run's losses and parameters bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from transformer_jax import sharding as shd
from transformer_jax.checkpoint import cause, committed_steps, storage_errno
from transformer_jax.model import param_count
from transformer_jax.train import adapters, budget, distill
from transformer_jax.train.build import (Setup, checkpointer, has_checkpoint, load_config,  # noqa: F401
                                         make_data_iterator, make_tokenizer, restore_for_eval, save_config, setup,
                                         step_config)
from transformer_jax.train.build import log as _log
from transformer_jax.train.evaluate import evaluate_bleu, evaluate_loss, final_eval, summary_line  # noqa: F401
from transformer_jax.train.experiment import validate_config  # noqa: F401
from transformer_jax.train.lock import workdir_lock
from transformer_jax.train.logs import MetricsWriter, Progress, read_metrics, write_json_atomic  # noqa: F401
from transformer_jax.train.profile import StepProfiler, parse_profile_steps
from transformer_jax.train.state import abstract_state
from transformer_jax.train.step import jit_train_step, make_train_step


class NonFiniteError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the last checkpoint on disk is left as it was."""


class WorkdirWriteError(ValueError):
    """Writing metrics, budget.json or eval.json failed for want of storage (disk full, quota,
    read-only): one line; the checkpoints are the Checkpointer's and stay as they were."""


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # only a write meets these


# ----------------------------------------------------------------------------------------------
# Log lines, stop signals, the saved config


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _stop_signals():
    """Turn SIGTERM and a first Ctrl-C (SIGINT) into a flag the loop checks between steps (it saves,
    then exits); a second Ctrl-C interrupts at once. `flag["signal"]` is the signal's name."""
    flag: dict[str, str | None] = {"signal": None}

    def handler(signum, _frame):
        if signum == signal.SIGINT and flag["signal"] == "SIGINT":
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name
        if signum == signal.SIGINT:  # os.write: print() here could re-enter a stream tqdm is writing
            os.write(2, b"\nSIGINT: saving a checkpoint after this step (Ctrl-C again to abort without saving)\n")

    previous = {}
    for sig in STOP_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield flag
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)


def _any_process(*flags: bool):
    """Each flag OR-ed over all processes (one collective); a bool for one flag, else a tuple."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        gathered = np.asarray(multihost_utils.process_allgather(np.array(flags))).reshape(-1, len(flags))
        flags = tuple(bool(x) for x in gathered.any(axis=0))
    return flags[0] if len(flags) == 1 else tuple(flags)


# ----------------------------------------------------------------------------------------------
# Train


def _compile(s: Setup, state, teacher: distill.Teacher | None = None):
    """The train step compiled for the state's shardings; logs its memory per device. With a
    teacher, the returned step binds its parameters (a non-trained argument of the jitted step)."""
    step_fn = make_train_step(s.model, s.tx, s.schedule, step_config(s.config), task=s.task, teacher=teacher)
    with shd.activate(s.mesh):
        jitted, _ = jit_train_step(step_fn, s.shardings, s.example, s.mesh,
                                   teacher_shardings=None if teacher is None else teacher.shardings)
        extra = () if teacher is None else (teacher.abstract_params(),)
        compiled = jitted.lower(abstract_state(state, s.shardings), s.example, *extra).compile()
    mem = compiled.memory_analysis()
    if mem is not None:
        total = sum(getattr(mem, f, 0) or 0 for f in ("argument_size_in_bytes", "output_size_in_bytes",
                                                      "temp_size_in_bytes", "generated_code_size_in_bytes"))
        total -= getattr(mem, "alias_size_in_bytes", 0) or 0
        _log(f"compiled train step: ~{total / 2**20:.1f} MiB per device (arguments "
             f"{mem.argument_size_in_bytes / 2**20:.1f} MiB, temporaries {mem.temp_size_in_bytes / 2**20:.1f} MiB)")
    if teacher is None:
        return compiled
    return lambda state, batch: compiled(state, batch, teacher.params)


def _nonfinite_message(step_no: int, m: dict, latest: int | None) -> str:
    kept = (f"the last checkpoint (step {latest}) is intact" if latest is not None
            else "no checkpoint had been saved yet")
    return (f"non-finite loss or gradient at step {step_no} (loss={float(m['loss'])}, "
            f"grad_norm={float(m['grad_norm'])}); stopping; {kept}")


def train(config: ml_collections.ConfigDict, workdir: str, *, train_iter: Iterator | None = None,
          eval_iter_fn: Callable[[], Iterator] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Train (or resume) in `workdir`; returns a summary (final step, last metrics, eval results).

    `train_iter` (this process's batches, with get_state/set_state) and `eval_iter_fn` default to
    the data pipeline of `config.data`. `progress`: show a tqdm bar (None: when stderr is a
    terminal). SIGTERM or Ctrl-C saves a checkpoint after the current step and returns with
    `summary["preempted"]` and `summary["signal"]` set.
    """
    s, train_iter = setup(config, workdir, train_iter=train_iter, training=True)
    with workdir_lock(workdir):  # before anything is written there: one trainer per workdir (train/lock.py)
        try:
            return _train(s, config, workdir, train_iter, eval_iter_fn, progress)
        except OSError as err:
            if storage_errno(err) not in FULL_ERRNOS:  # a read that fails (EACCES, EIO) is not this
                raise
            steps = committed_steps(os.path.join(workdir, "checkpoints"))
            kept = f"the last checkpoint (step {steps[-1]}) is intact" if steps else "no checkpoint had been saved yet"
            where = f" ({err.filename})" if err.filename else ""
            raise WorkdirWriteError(f"writing in --workdir={workdir!r} failed{where}: {cause(err)}; {kept}; "
                                    "free space and run the same command to resume") from None


def _train(s: Setup, config: ml_collections.ConfigDict, workdir: str, train_iter: Iterator,
           eval_iter_fn: Callable[[], Iterator] | None, progress: bool | None) -> dict[str, Any]:
    budget.check_file(workdir)  # a corrupt budget.json: named before anything is written or compiled
    save_config(config, workdir)
    mesh, state = s.mesh, s.state
    _log(shd.mesh_summary(mesh))
    count = param_count(state.frozen if s.lora else state.params)  # with LoRA: the model's, not the adapters'
    _log(f"{s.task.name} task, model {type(s.model).__name__}: {count:,} parameters")

    ckpt = checkpointer(config, workdir, base=state.frozen)  # with LoRA: the base stays out of checkpoints
    restored = ckpt.restore(abstract_state(state, s.shardings))
    if restored is not None:  # (init_from was applied by setup only when there is no checkpoint)
        state, data_state, step = restored
        if data_state is not None:
            train_iter.set_state(data_state)
        _log(f"resumed from checkpoint at step {step}")
    pruned = ckpt.prune()  # a lower keep_checkpoints frees its space before the next save
    if pruned:
        _log(f"keep_checkpoints={config.keep_checkpoints}: deleted the checkpoints of steps {pruned}")
    teacher = distill.load_teacher(config, mesh, s.task, s.example, s.model, _log)  # reloaded on every start
    layer_map = distill.parse_layer_map(config.distill.get("init_from_teacher", "")) if teacher else None
    if restored is None and layer_map is not None:  # a fresh student: layers copied from the teacher
        state = distill.init_student(state, s.shardings, teacher, s.model, layer_map, _log)
    start = int(jax.device_get(state.step))
    compiled = _compile(s, state, teacher if teacher is not None and teacher.in_step else None)
    clock = budget.Clock(workdir, config.get("budget_minutes", 0.0), start, writer=jax.process_index() == 0,
                         eval_every_minutes=config.get("eval_every_minutes", 0.0))
    clock.start()  # the budget counts training time from here (compilation excluded; budget.py)

    writer = MetricsWriter(workdir)
    profiler = StepProfiler(parse_profile_steps(config.get("profile_steps", "")), workdir)
    total_steps = config.num_train_steps
    bar = Progress(start, total_steps, s.task.unit, progress, budget_left=clock.remaining)
    pending: list[tuple[int, dict]] = []  # device metrics since the last log (async dispatch)
    last: dict[str, Any] = {}
    summary: dict[str, Any] = {"start_step": start}
    t_log = time.time()

    def flush_metrics():
        """Fetch pending metrics; stop (or note) on a non-finite step; log the last one."""
        nonlocal t_log, last
        if not pending:
            return
        fetched = jax.device_get(pending)
        pending.clear()
        tokens = sum(float(m["tokens"]) for _, m in fetched)
        for step_no, m in fetched:
            if not bool(m["finite"]):
                if config.nonfinite == "stop":
                    raise NonFiniteError(_nonfinite_message(step_no, m, ckpt.latest_step()))
                _log(f"warning: non-finite loss or gradient at step {step_no}; update skipped")
        elapsed = max(time.time() - t_log, 1e-9)
        t_log = time.time()
        logged = False
        for step_no, m in fetched:
            record = {k: float(v) for k, v in m.items() if k not in ("finite",)}
            record["finite"] = bool(m["finite"])
            if step_no % config.log_every == 0 or step_no == total_steps:
                record["tokens_per_sec"] = tokens / elapsed
                writer.write(step_no, record)
                last, logged = {"step": step_no, **record}, True
        if logged:
            bar.log(last["step"], last["loss"], last["tokens_per_sec"])

    try:
        with _stop_signals() as stop_flag, shd.activate(mesh):
            step = start
            data_state = train_iter.get_state()
            out_of_time = _any_process(clock.spent_before())  # a restarted run whose budget is spent
            while step < total_steps and not out_of_time:
                batch = next(train_iter)
                data_state = train_iter.get_state()
                profiler.before(step + 1)
                state, metrics = compiled(state, shd.shard_batch(batch, mesh))
                step += 1  # state.step == step: the number of updates applied
                profiler.after(step, (state, metrics))
                pending.append((step, metrics))
                bar.update()
                if clock.timed:  # time what has been computed, not what has been dispatched
                    jax.block_until_ready(metrics)
                stop, out_of_time, eval_time = _any_process(stop_flag["signal"] is not None, clock.expired(),
                                                            clock.eval_due())
                last_step = step == total_steps or out_of_time
                log_now = step % config.log_every == 0 or last_step
                save_now = step % config.checkpoint_every == 0 or last_step or stop
                eval_now = eval_time or (bool(config.eval_every) and step % config.eval_every == 0) or (
                    last_step and budget.evaluates(config))
                if eval_time:
                    clock.evaluated()
                if log_now or save_now or eval_now:
                    flush_metrics()  # raises before a non-finite state can be saved
                eval_metrics = None
                if eval_now:
                    eval_iter = eval_iter_fn() if eval_iter_fn else make_data_iterator(
                        config, config.data.eval_split, s.tokenizer, repeat=False, task=s.task)
                    with clock.paused():  # a measurement, not training time (budget.py)
                        eval_metrics = evaluate_loss(s, s.eval_params(state), eval_iter, config.eval_batches)
                    writer.write(step, {**eval_metrics, "train_seconds": clock.elapsed()})
                    _log(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
                if save_now or eval_now:
                    best = None
                    if eval_metrics and config.best_metric in eval_metrics:
                        best = {config.best_metric: eval_metrics[config.best_metric]}
                    clock.record(step)
                    ckpt.save(step, state, data_state, metrics=best)
                if stop:
                    ckpt.wait()
                    name = stop_flag["signal"] or "stop signal on another process"
                    _log(f"{name}: saved checkpoint at step {step}; exiting")
                    summary.update(preempted=True, signal=stop_flag["signal"])
                    break
            flush_metrics()
        ckpt.wait()
        if out_of_time and step < total_steps:
            _log(f"budget: stopped at step {step} of {total_steps} after {clock.elapsed() / 60:.2f} minutes of "
                 f"training (config.budget_minutes={config.budget_minutes})")
        summary.update(step=step, last=last, train_seconds=clock.elapsed(), out_of_time=out_of_time)
        finished = step >= total_steps or out_of_time
        if finished and s.lora is not None:
            adapters.export(s.lora, state, workdir, _log)  # <workdir>/adapters: what serving needs beside the base
        if finished and config.get("test_at_end", True) and eval_iter_fn is None and config.data.dataset != "synthetic":
            params, chosen = budget.best_params(s, ckpt, state, step)
            result = final_eval(s, s.eval_params(state.replace(params=params)), config.data.test_split)
            result.update(step=step, checkpoint_step=chosen, train_seconds=summary["train_seconds"])
            _log(summary_line(result))
            if jax.process_index() == 0:
                write_json_atomic(os.path.join(workdir, "eval.json"), result)
            summary["eval"] = result
    finally:
        try:
            profiler.stop()  # a run that ended (or failed) inside the traced steps
            bar.close()
            writer.close()
        finally:
            ckpt.close()  # even when the disk is full and writer.close() failed: Orbax's threads end first
    summary["state"] = state
    return summary


