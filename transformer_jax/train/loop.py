"""The training loop: the impure edge around the pure step (data, logging, checkpoints, signals).

    config -> validate (before anything compiles) -> mesh -> model -> sharded state
           -> restore latest checkpoint (state + data position) -> compiled step
           -> for each step: next batch, step, log, checkpoint, eval -> final BLEU

Exact resume: the step is deterministic, the dropout rng is `fold_in(rng, step)`, and the
checkpoint holds the data iterator's position, so a run killed at any point (SIGKILL included)
and restarted reproduces the uninterrupted run's losses and parameters bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from transformer_jax import sharding as shd
from transformer_jax.train import optim
from transformer_jax.train.experiment import (MODEL_TYPES, NONFINITE, SYNTHETIC, build_model,  # noqa: F401
                                              check_batch_fits, model_config, task_kind, validate_config)
from transformer_jax.train.logs import MetricsWriter, Progress, read_metrics, write_json_atomic  # noqa: F401
from transformer_jax.train.state import TrainState, abstract_state, count_params, create_train_state
from transformer_jax.train.step import (StepConfig, jit_eval_step, jit_train_step, make_eval_step,
                                        make_train_step)


class NonFiniteError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the last checkpoint on disk is left as it was."""


def _step_config(config) -> StepConfig:
    return StepConfig(micro_batches=config.micro_batches, label_smoothing=config.label_smoothing,
                      z_loss=config.z_loss, skip_nonfinite=config.nonfinite == "skip")


# ----------------------------------------------------------------------------------------------
# Data


def make_tokenizer(config, workdir: str):
    if config.data.task == SYNTHETIC:
        return None
    from transformer_jax import data

    return data.make_task_tokenizer(config.data.tokenizer, config.data.task, workdir=workdir,
                                    vocab_size=config.data.vocab_size or None, text_keys=_text_keys(config),
                                    data_dir=config.data.data_dir or None)


def make_data_iterator(config, split: str, tokenizer, *, repeat: bool, batch_size: int | None = None,
                       seed: int | None = None):
    """This process's iterator over `split` (its `1/process_count` share of each global batch)."""
    batch_size = config.batch_size if batch_size is None else batch_size
    local = batch_size // jax.process_count()
    seed = config.seed if seed is None else seed
    if config.data.task == SYNTHETIC:
        from transformer_jax.train.synthetic import SyntheticIterator

        return SyntheticIterator(global_batch_size=batch_size, max_len=config.data.max_src_len,
                                 vocab_size=config.model.vocab_size, seed=seed if split == "train" else seed + 1,
                                 shard_index=jax.process_index(), shard_count=jax.process_count())
    from transformer_jax import data

    return data.make_iterator(config.data.task, split, tokenizer=tokenizer, batch_size=local,
                              max_src_len=config.data.max_src_len, max_tgt_len=config.data.max_tgt_len,
                              pack=config.data.pack if repeat else False, seed=seed,
                              shard_index=jax.process_index(), shard_count=jax.process_count(),
                              repeat=repeat, data_dir=config.data.data_dir or None,
                              text_keys=_text_keys(config))


def _text_keys(config):
    """config.data.text_keys (e.g. ('en', 'de') for en->de), or None for the task's default."""
    return tuple(config.data.get("text_keys", ())) or None


def _peek(iterator) -> dict[str, np.ndarray]:
    """The next batch without consuming it (for shapes)."""
    saved = iterator.get_state()
    batch = next(iterator)
    iterator.set_state(saved)
    return batch


# ----------------------------------------------------------------------------------------------
# Log lines, stop signals, the saved config


def _log(*args):
    if jax.process_index() == 0:
        print(*args, flush=True)


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


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def save_config(config, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    tmp = os.path.join(workdir, f"config.pkl.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(config, f)
    os.replace(tmp, os.path.join(workdir, "config.pkl"))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.pkl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--workdir={workdir!r} has no config.pkl; pass --config (the one used to train)")
    with open(path, "rb") as f:
        return pickle.load(f)


# ----------------------------------------------------------------------------------------------
# Setup shared by train / eval / decode


@dataclasses.dataclass
class Setup:
    config: Any
    workdir: str
    mesh: Any
    model: Any
    tx: Any
    schedule: Callable
    state: TrainState
    shardings: TrainState
    tokenizer: Any
    example: dict


def check_data(config, splits: tuple[str, ...] = ("train",)) -> None:
    """Open the data task's splits (cheap; prepares built-in tasks) so a missing dataset fails before
    anything is written to the workdir. DatasetNotPreparedError (a FileNotFoundError) says how."""
    if config.data.task == SYNTHETIC:
        return
    from transformer_jax import data

    for split in splits:
        data.open_source(config.data.task, split, data_dir=config.data.data_dir or None)


def setup(config, workdir: str, *, train_iter=None, tokenizer=None) -> tuple[Setup, Any]:
    """Validate, build the mesh, model, optimiser and sharded state (not yet restored).

    The workdir is created only after the config and the data check out; if this call created it
    and anything fails before it returns, it is removed again (no half-made workdirs).
    """
    sizes = validate_config(config, workdir)
    if train_iter is None:
        check_data(config)
    fresh = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        return _build(config, workdir, sizes, train_iter, tokenizer)
    except BaseException:
        if fresh and jax.process_index() == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _build(config, workdir: str, sizes: dict[str, int], train_iter, tokenizer) -> tuple[Setup, Any]:
    mesh = shd.make_mesh(sizes)
    model = build_model(config)
    tx, schedule = optim.optimizer_from_config(config.optimizer, config.schedule,
                                               total_steps=config.num_train_steps, d_model=model.cfg.d_model)
    if tokenizer is None:
        tokenizer = make_tokenizer(config, workdir)
    if tokenizer is not None and tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"config.model.vocab_size={model.cfg.vocab_size} is smaller than the tokenizer's "
                         f"vocabulary ({tokenizer.vocab_size}); set it to at least {tokenizer.vocab_size}")
    if train_iter is None:
        train_iter = make_data_iterator(config, "train", tokenizer, repeat=True)
    example = _peek(train_iter)
    check_batch_fits(config, example)
    shapes = {k: jax.ShapeDtypeStruct((config.batch_size, *np.shape(v)[1:]), np.asarray(v).dtype)
              for k, v in example.items()}
    state, shardings = create_train_state(model, tx, shapes, mesh, seed=config.seed)
    return Setup(config, workdir, mesh, model, tx, schedule, state, shardings, tokenizer, shapes), train_iter


def _checkpointer(config, workdir, *, track_best: bool = True):
    """The run's Checkpointer; it scores checkpoints by `best_metric` only when eval computes it."""
    from transformer_jax.checkpoint import Checkpointer

    best = config.best_metric if track_best and config.eval_every and config.best_metric else None
    return Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                        best_metric=best, best_mode=config.best_mode, async_save=config.async_checkpoints)


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate_loss(s: Setup, params, eval_iter, max_batches: int = 0) -> dict[str, float]:
    """Mean loss / NLL / accuracy over the non-pad targets of (up to `max_batches` of) an iterator."""
    fn = jit_eval_step(make_eval_step(s.model, _step_config(s.config)), s.shardings.params, s.example, s.mesh)
    totals: dict[str, float] = {}
    with shd.activate(s.mesh):
        for i, batch in enumerate(eval_iter):
            if max_batches and i >= max_batches:
                break
            sums = jax.device_get(fn(params, shd.shard_batch(batch, s.mesh)))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
    w = max(totals.get("weight", 0.0), 1.0)
    return {"eval_loss": totals.get("loss", 0.0) / w, "eval_nll": totals.get("nll", 0.0) / w,
            "eval_accuracy": totals.get("correct", 0.0) / w, "eval_tokens": totals.get("weight", 0.0)}


def translate(s: Setup, params, sources: list[str], *, beam_size: int, max_len: int,
              length_penalty: float, batch_size: int) -> list[str]:
    """Beam-search translations of `sources` (strings) with `transformer_jax.generate`."""
    from transformer_jax.config import EOS_ID
    from transformer_jax.decode import generate

    src_len = s.config.data.max_src_len
    outputs = []
    replicated = shd.replicated(s.mesh)
    params = jax.device_put(params, jax.tree.map(lambda _: replicated, params))
    gen = jax.jit(lambda p, src: generate(s.model, {"params": p}, src, max_len=max_len, beam_size=beam_size,
                                          length_penalty=length_penalty))
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        src = np.zeros((batch_size, src_len), np.int32)
        for r, text in enumerate(chunk):
            ids = list(s.tokenizer.encode(text))[: src_len - 1] + [EOS_ID]
            src[r, : len(ids)] = ids
        with shd.activate(s.mesh):
            out = np.asarray(jax.device_get(gen(params, jax.device_put(src, replicated))))
        for row in out[: len(chunk)]:
            ids = row.tolist()
            if EOS_ID in ids:
                ids = ids[: ids.index(EOS_ID)]
            outputs.append(s.tokenizer.decode(ids))
    return outputs


def evaluate_bleu(s: Setup, params, split: str) -> dict[str, Any]:
    """Corpus BLEU (sacrebleu) of beam-search translations of a translation task's `split`."""
    from transformer_jax import data

    dc = s.config.decode
    pairs = list(data.eval_pairs(s.config.data.task, split, data_dir=s.config.data.data_dir or None,
                                 text_keys=_text_keys(s.config), max_examples=dc.max_examples or None))
    sources, references = [p[0] for p in pairs], [p[1] for p in pairs]
    t0 = time.time()
    hyps = translate(s, params, sources, beam_size=dc.beam_size, max_len=min(dc.max_len, s.model.cfg.max_len),
                     length_penalty=dc.length_penalty, batch_size=dc.batch_size)
    bleu, signature = data.corpus_bleu(hyps, references)
    return {"split": split, "bleu": bleu, "signature": signature, "examples": len(pairs),
            "beam_size": dc.beam_size, "seconds": time.time() - t0,
            "samples": [{"source": a, "reference": b, "hypothesis": c}
                        for a, b, c in list(zip(sources, references, hyps))[:5]]}


# ----------------------------------------------------------------------------------------------
# Train


def _compile(s: Setup, state):
    """The train step compiled for the state's shardings; logs its memory per device."""
    step_fn = make_train_step(s.model, s.tx, s.schedule, _step_config(s.config))
    with shd.activate(s.mesh):
        jitted, _ = jit_train_step(step_fn, s.shardings, s.example, s.mesh)
        compiled = jitted.lower(abstract_state(state, s.shardings), s.example).compile()
    mem = compiled.memory_analysis()
    if mem is not None:
        total = sum(getattr(mem, f, 0) or 0 for f in ("argument_size_in_bytes", "output_size_in_bytes",
                                                      "temp_size_in_bytes", "generated_code_size_in_bytes"))
        total -= getattr(mem, "alias_size_in_bytes", 0) or 0
        _log(f"compiled train step: ~{total / 2**20:.1f} MiB per device (arguments "
             f"{mem.argument_size_in_bytes / 2**20:.1f} MiB, temporaries {mem.temp_size_in_bytes / 2**20:.1f} MiB)")
    return compiled


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
    s, train_iter = setup(config, workdir, train_iter=train_iter)
    save_config(config, workdir)
    mesh, state = s.mesh, s.state
    _log(shd.mesh_summary(mesh))
    _log(f"model {config.model_type}: {count_params(state.params):,} parameters")

    ckpt = _checkpointer(config, workdir)
    restored = ckpt.restore(abstract_state(state, s.shardings))
    if restored is not None:
        state, data_state, step = restored
        if data_state is not None:
            train_iter.set_state(data_state)
        _log(f"resumed from checkpoint at step {step}")
    start = int(jax.device_get(state.step))
    compiled = _compile(s, state)

    writer = MetricsWriter(workdir)
    total_steps = config.num_train_steps
    bar = Progress(start, total_steps, "examples" if "label" in s.example else "tokens", progress)
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
            while step < total_steps:
                batch = next(train_iter)
                data_state = train_iter.get_state()
                state, metrics = compiled(state, shd.shard_batch(batch, mesh))
                step += 1  # state.step == step: the number of updates applied
                pending.append((step, metrics))
                bar.update()
                stop = _any_process(stop_flag["signal"] is not None)
                log_now = step % config.log_every == 0 or step == total_steps
                save_now = step % config.checkpoint_every == 0 or step == total_steps or stop
                eval_now = bool(config.eval_every) and (step % config.eval_every == 0 or step == total_steps)
                if log_now or save_now or eval_now:
                    flush_metrics()  # raises before a non-finite state can be saved
                eval_metrics = None
                if eval_now:
                    eval_iter = eval_iter_fn() if eval_iter_fn else make_data_iterator(
                        config, config.data.eval_split, s.tokenizer, repeat=False)
                    eval_metrics = evaluate_loss(s, state.params, eval_iter, config.eval_batches)
                    writer.write(step, eval_metrics)
                    _log(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
                if save_now or eval_now:
                    best = None
                    if eval_metrics and config.best_metric in eval_metrics:
                        best = {config.best_metric: eval_metrics[config.best_metric]}
                    ckpt.save(step, state, data_state, metrics=best)
                if stop:
                    ckpt.wait()
                    name = stop_flag["signal"] or "stop signal on another process"
                    _log(f"{name}: saved checkpoint at step {step}; exiting")
                    summary.update(preempted=True, signal=stop_flag["signal"])
                    break
            flush_metrics()
        ckpt.wait()
        summary.update(step=step, last=last)
        if step >= total_steps and task_kind(config) == "translation" and config.decode.bleu_at_end:
            result = evaluate_bleu(s, state.params, config.data.test_split)
            result["step"] = step
            _log(f"BLEU {result['bleu']:.2f} on {result['split']} ({result['examples']} sentences, "
                 f"beam {result['beam_size']}) | {result['signature']}")
            if jax.process_index() == 0:
                write_json_atomic(os.path.join(workdir, "eval.json"), result)
            summary["eval"] = result
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    summary["state"] = state
    return summary


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir/checkpoints` holds a committed step (checked on disk, nothing created)."""
    from transformer_jax.checkpoint import committed_steps

    return bool(committed_steps(os.path.join(workdir, "checkpoints")))


def restore_for_eval(config, workdir: str, *, which: str = "latest") -> tuple[Setup, TrainState, int]:
    """Setup + params of the latest (or best) checkpoint in `workdir`, on this machine's mesh.

    Fails (FileNotFoundError) before building anything when `workdir` holds no checkpoint.
    """
    if not has_checkpoint(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} holds no checkpoint (nothing in "
                                f"{os.path.join(workdir, 'checkpoints')}); train there first")
    s, _ = setup(config, workdir)
    ckpt = _checkpointer(config, workdir)
    step = ckpt.best_step() if which == "best" else None
    restored = ckpt.restore(abstract_state(s.state, s.shardings), step=step)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    return s, restored[0], restored[2]
