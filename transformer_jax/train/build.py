"""Building an experiment from its (validated) config: task, mesh, model, optimiser, tokenizer, data
iterators and the sharded train state; the saved config; restoring a workdir for eval/decode.

    config -> validate_config (experiment.py) -> task -> mesh -> model -> optimiser (+ freeze)
           -> tokenizer -> train iterator -> sharded state (not yet restored; with LoRA the
              adapters over a frozen base, train/adapters.py)
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from transformer_jax import sharding as shd
from transformer_jax import tasks
from transformer_jax.train import adapters, checkpoint_source, distill, optim, sequence_kd
from transformer_jax.train.experiment import (MODEL_CONFIG, SYNTHETIC, build_model_and_source, check_batch_fits,
                                              config_task, validate_config)
from transformer_jax.train.state import TrainState, abstract_state, create_train_state
from transformer_jax.train.step import StepConfig
from transformer_jax.train.warm_start import check_freeze, freeze, summarize, warm_start


def log(*args):
    if jax.process_index() == 0:
        print(*args, flush=True)


def step_config(config) -> StepConfig:
    return StepConfig(micro_batches=config.micro_batches, label_smoothing=config.label_smoothing,
                      z_loss=config.z_loss, skip_nonfinite=config.nonfinite == "skip",
                      lora=adapters.lora_config(config))


def make_optimizer(config, model) -> tuple[Any, Callable]:
    """optim.py's optimiser and schedule; parameters matching `config.freeze` get no updates."""
    tx, schedule = optim.optimizer_from_config(config.optimizer, config.schedule,
                                               total_steps=config.num_train_steps, d_model=model.cfg.d_model)
    patterns = tuple(config.get("freeze", ()) or ())
    return (freeze(tx, patterns) if patterns else tx), schedule


# ----------------------------------------------------------------------------------------------
# Data


def make_tokenizer(config, workdir: str, task: tasks.Task | None = None):
    """The run's tokenizer: a Hugging Face `init_from`'s own (copied into the workdir; the checkpoint
    decides), else the one `config.data.tokenizer` names (SentencePiece trained on the dataset once;
    a fine-tuning task's is framed like a checkpoint's, data/framed.py)."""
    if config.data.dataset == SYNTHETIC and not config.get("task", ""):
        return None
    from transformer_jax import data

    task = config_task(config) if task is None else task
    if not task.uses_tokenizer:  # images
        return None
    source = config.get("init_from", "")
    if source and checkpoint_source.is_workdir(source) and os.path.isdir(os.path.join(source, "tokenizer")):
        source = os.path.join(source, "tokenizer")  # a workdir that started from Hugging Face passes its tokenizer on
    kept = os.path.isdir(os.path.join(workdir, "tokenizer"))  # a Hugging Face source's, copied at the start
    if kept or (source and checkpoint_source.is_pretrained_dir(source)):
        from transformer_jax.pretrained import load_tokenizer

        return load_tokenizer(checkpoint_source.copy_tokenizer(source, workdir))
    teacher = (config.get("distill", None) or {}).get("teacher", "")  # a student reads text as its teacher does
    if config.data.tokenizer == "sentencepiece" and (config.get("init_from", "") or teacher):
        _tokenizer_from(config.get("init_from", "") or teacher,
                        data.sentencepiece_path(workdir, config.data.dataset, config.data.vocab_size, task.symbols))
    if config.get("task", ""):
        return data.Framed(_files_tokenizer(config, workdir, task), task.framing)
    return data.make_task_tokenizer(config.data.tokenizer, config.data.dataset, workdir=workdir,
                                    vocab_size=config.data.vocab_size or None, text_keys=task.text_features(),
                                    data_dir=config.data.data_dir or None, symbols=task.symbols)


def _files_tokenizer(config, workdir: str, task):
    """The built-in tokenizer of a fine-tuning task without a Hugging Face checkpoint: bytes, or
    SentencePiece trained once on the text roles of the train files (kept in the workdir)."""
    from transformer_jax import data

    kind = config.data.tokenizer
    if kind not in data.TOKENIZER_KINDS:
        raise ValueError(f"config.data.tokenizer={kind!r}: without a Hugging Face config.init_from a "
                         f"{task.name} task uses a built-in tokenizer: {', '.join(data.TOKENIZER_KINDS)}")
    if kind != "sentencepiece":
        return data.make_tokenizer(kind)
    path = data.sentencepiece_path(workdir, config.data.dataset, config.data.vocab_size, task.symbols)
    return data.make_tokenizer("sentencepiece", model_path=path, vocab_size=config.data.vocab_size,
                               texts=lambda: record_texts(file_source(config, "train", task), task.text_features()))


def record_texts(source, roles):
    """The texts of `roles` in every record of `source` (a list of words joined by spaces)."""
    for i in range(len(source)):
        record = source[i]
        for role in roles:
            value = record.get(role)
            if value:
                yield " ".join(value) if isinstance(value, list) else value


def _tokenizer_from(source: str, path: str) -> None:
    """A run that starts from one of our workdirs reads text as that run did: its SentencePiece model
    is copied to `path` (the name this run looks for) unless this workdir already has one."""
    from transformer_jax import data

    if os.path.exists(path) or not has_checkpoint(source):
        return
    cfg = load_config(source)
    if cfg.data.tokenizer != "sentencepiece":
        return
    src = data.sentencepiece_path(source, cfg.data.dataset, cfg.data.vocab_size, config_task(cfg).symbols)
    if os.path.exists(src):
        tmp = f"{path}.tmp{os.getpid()}"  # every process copies; the rename is atomic
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)
        log(f"init_from: tokenizer {src}")


def make_data_iterator(config, split: str, tokenizer, *, repeat: bool, batch_size: int | None = None,
                       seed: int | None = None, task: tasks.Task | None = None, records: list | None = None):
    """This process's iterator over `split` (its `1/process_count` share of each global batch);
    `records`: that split's records as given (sequence-level KD's, with the teacher's targets)."""
    batch_size = config.batch_size if batch_size is None else batch_size
    local = batch_size // jax.process_count()
    seed = config.seed if seed is None else seed
    if config.data.dataset == SYNTHETIC:
        from transformer_jax.train.synthetic import SyntheticIterator

        return SyntheticIterator(global_batch_size=batch_size, max_len=config.data.max_src_len,
                                 vocab_size=config.model.vocab_size, seed=seed if split == "train" else seed + 1,
                                 shard_index=jax.process_index(), shard_count=jax.process_count())
    from transformer_jax import data

    task = config_task(config) if task is None else task
    source = file_source(config, split, task) if config.get("task", "") and records is None else records
    name = f"files:{split}" if config.get("task", "") else config.data.dataset
    if records is not None:
        name += "+sequence_kd"  # a saved position of the reference data does not restore into these
    return data.make_iterator(name, split, layout=task,
                              source=source, tokenizer=tokenizer, batch_size=local,
                              max_src_len=config.data.max_src_len, max_tgt_len=config.data.max_tgt_len,
                              pack=config.data.pack if repeat else False, seed=seed,
                              shard_index=jax.process_index(), shard_count=jax.process_count(),
                              repeat=repeat, data_dir=config.data.data_dir or None)


SPLIT_FILES = {"train": "train_files", "validation": "validation_files", "test": "test_files"}


def file_source(config, split: str, task, *, roles=None, optional=None):
    """The user's files of `split` (`config.data.<split>_files`) as a random-access source of the
    task's records (data/files.py: every row checked up front, errors name the file and line)."""
    from transformer_jax.data.files import open_files

    key = SPLIT_FILES.get(split, f"{split}_files")
    files = config.data.get(key, "")
    if not files:
        raise ValueError(f"config.data.{key} is empty; a {task.name} task reads the {split} split from files "
                         "(JSONL, JSON, CSV, TSV or text; paths or globs, comma-separated)")
    labels = getattr(task, "labels", None) if getattr(task, "label_role", "label") is not None else None
    return open_files(files, task.roles if roles is None else roles,
                      optional=task.optional_roles if optional is None else optional,
                      columns=columns(config), labels=labels)


def columns(config) -> dict[str, str]:
    """`config.data.columns` without the roles left "" (their default columns)."""
    return {k: v for k, v in dict(config.data.get("columns", {}) or {}).items() if v}


def split_records(config, split: str, task, max_examples: int | None = None) -> list[dict]:
    """The records of `split` (the user's files, or the tfds dataset), in order, up to `max_examples`."""
    from transformer_jax import data

    if config.get("task", ""):
        source = file_source(config, split, task)
        n = len(source) if not max_examples else min(len(source), max_examples)
        return [source[i] for i in range(n)]
    return list(data.dataset_records(config.data.dataset, split, data_dir=config.data.data_dir or None,
                             max_examples=max_examples))


def text_keys(config):
    """config.data.text_keys (e.g. ('en', 'de') for en->de), or None for the task's default."""
    return tuple(config.data.get("text_keys", ())) or None


def _peek(iterator) -> dict[str, np.ndarray]:
    """The next batch without consuming it (for shapes)."""
    saved = iterator.get_state()
    batch = next(iterator)
    iterator.set_state(saved)
    return batch


def train_split(config) -> str:
    """`config.data.train_split` (tfds split syntax, e.g. "train[:8000]"; default "train"). Runs on the
    user's files (`config.task`) and synthetic data read their whole train split."""
    split = config.data.get("train_split", "train") or "train"
    if not isinstance(split, str):
        raise ValueError(f"config.data.train_split={split!r} must be a tfds split string, e.g. 'train[:8000]'")
    if split != "train" and (config.get("task", "") or config.data.dataset == SYNTHETIC):
        where = "config.data.train_files" if config.get("task", "") else "synthetic data"
        raise ValueError(f"config.data.train_split={split!r}: {where} has one train split; leave it 'train'")
    return split


def check_data(config, splits: tuple[str, ...] | None = None) -> None:
    """Open the data task's splits (default: the train split; cheap; prepares built-in tasks) so a
    missing dataset fails before anything is written to the workdir. DatasetNotPreparedError (a
    FileNotFoundError) says how."""
    splits = (train_split(config),) if splits is None else splits
    if config.get("task", ""):  # the user's files: every row checked (named errors) before anything is built
        task = config_task(config)
        for split in splits:
            file_source(config, split, task)
        return
    if config.data.dataset == SYNTHETIC:
        return
    from transformer_jax import data

    for split in splits:
        data.open_source(config.data.dataset, split, data_dir=config.data.data_dir or None)


# ----------------------------------------------------------------------------------------------
# The saved config


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
        return upgrade_config(pickle.load(f))


def upgrade_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config saved by an older version: the dataset's name was `data.task` (now `data.dataset`;
    the task is what is learned, the dataset which data)."""
    if "dataset" not in config.data and "task" in config.data:
        with config.unlocked():
            config.data.dataset = config.data.task
            del config.data["task"]
    return config


# ----------------------------------------------------------------------------------------------
# Setup shared by train / eval / decode


@dataclasses.dataclass
class Setup:
    config: Any
    workdir: str
    task: tasks.Task
    mesh: Any
    model: Any
    tx: Any
    schedule: Callable
    state: TrainState
    shardings: TrainState
    tokenizer: Any
    example: dict
    lora: Any = None  # a lora.LoraConfig when config.lora.rank > 0

    def eval_params(self, state: TrainState):
        """The parameters the model runs on: `state.params`, or with LoRA the base merged with the
        adapters (placed like the base)."""
        return state.params if self.lora is None else adapters.merged_params(self.lora, state, self.shardings)

    @property
    def param_shardings(self):
        """Shardings of `eval_params`: the base's with LoRA."""
        return self.shardings.params if self.lora is None else self.shardings.frozen


def setup(config, workdir: str, *, train_iter=None, tokenizer=None, training: bool = False) -> tuple[Setup, Any]:
    """Validate, build the mesh, model, optimiser and sharded state (not yet restored).

    `training`: the train iterator is the one training reads (with `distill.sequence_level`, the
    teacher's translations as targets, generated or read from the workdir's cache); eval and decode
    build it only for its shapes, from the references.

    The workdir is created only after the config and the data check out; if this call created it
    and anything fails before it returns, it is removed again (no half-made workdirs).
    """
    sizes = validate_config(config, workdir)
    distill.check_teacher_early(config)  # a teacher workdir that does not fit the student: before any write
    if train_iter is None:
        check_data(config)
    elif training and sequence_kd.enabled(config):
        raise ValueError("config.distill.sequence_level=True makes the training batches from the teacher's "
                         "translations; train(..., train_iter=...) passes batches of its own")
    epochs_to_steps(config)
    fresh = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        return _build(config, workdir, sizes, train_iter, tokenizer, training)
    except BaseException:
        if fresh and jax.process_index() == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def epochs_to_steps(config) -> None:
    """`config.num_epochs` > 0 sets `num_train_steps` to that many passes over the train files (the
    last partial batch of each pass dropped) and records the labels and generation settings the run
    derived, so the saved config reproduces the run (eval, predict and export read them, not the
    `init_from` directory)."""
    if not config.get("task", ""):
        return
    task = config_task(config)
    with config.unlocked():
        if getattr(task, "generation", None) is not None:
            config.generation = ml_collections.ConfigDict(dataclasses.asdict(task.generation))
        if getattr(task, "labels", None) is not None:
            config.data.labels = tuple(task.labels)
        elif getattr(task, "label_role", None) == "label":
            config.data.labels = ("<regression>",)
        epochs = config.get("num_epochs", 0) or 0
        if epochs > 0:
            n = len(file_source(config, "train", task))
            config.num_train_steps = max(1, int(epochs * n) // config.batch_size)


def _model(config, task, workdir: str, resuming: bool):
    """(model, the source's variables or None). A run from `init_from` keeps the architecture it
    decided (`model_config.pkl`): a restart, eval, predict and export build from the workdir alone,
    without reading the source again."""
    path = os.path.join(workdir, MODEL_CONFIG)
    if config.get("init_from", "") and resuming and os.path.exists(path):
        with open(path, "rb") as f:
            return task.make_model(pickle.load(f)), None
    model, variables = build_model_and_source(config, task)
    if config.get("init_from", "") and jax.process_index() == 0:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            pickle.dump(model.cfg, f)
        os.replace(tmp, path)
    return model, variables


def _build(config, workdir: str, sizes: dict[str, int], train_iter, tokenizer, training: bool = False
           ) -> tuple[Setup, Any]:
    task = config_task(config)
    mesh = shd.make_mesh(sizes)
    resuming = has_checkpoint(workdir)
    model, source_variables = _model(config, task, workdir, resuming)
    task = task.for_model(getattr(model, "cfg", None))  # e.g. no token types for a model without them (DistilBERT)
    tx, schedule = make_optimizer(config, model)
    if tokenizer is None:
        tokenizer = make_tokenizer(config, workdir, task)
    if tokenizer is not None and tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"config.model.vocab_size={model.cfg.vocab_size} is smaller than the tokenizer's "
                         f"vocabulary ({tokenizer.vocab_size}); set it to at least {tokenizer.vocab_size}")
    if train_iter is None:
        split = train_split(config)
        records = sequence_kd.train_records(config, workdir, split, task, mesh, tokenizer, model, resuming=resuming,
                                            log=log) if training and sequence_kd.enabled(config) else None
        train_iter = make_data_iterator(config, split, tokenizer, repeat=True, task=task, records=records)
    example = _peek(train_iter)
    check_batch_fits(config, task, example)
    shapes = {k: jax.ShapeDtypeStruct((config.batch_size, *np.shape(v)[1:]), np.asarray(v).dtype)
              for k, v in example.items()}
    lora = adapters.lora_config(config)
    if lora is not None:  # adapters over a frozen base (re-derived from init_from on every start)
        state, shardings = adapters.create_state(config, model, tx, shapes, mesh, task, workdir, log,
                                                 resuming=resuming)
    else:
        adapters.check_record(config, workdir, resuming)
        state, shardings = create_train_state(model, tx, shapes, mesh, seed=config.seed, task=task)
        frozen = check_freeze(state.params, tuple(config.get("freeze", ()) or ()))
        if frozen:
            log(f"freeze: {len(frozen)} parameters get no updates: {summarize(frozen)}")
        if config.get("init_from", "") and not resuming:  # a resumed run restores its own state
            state = warm_start(state, shardings, config.init_from, mesh, workdir, log, getattr(model, "cfg", None),
                               variables=source_variables)
    return Setup(config, workdir, task, mesh, model, tx, schedule, state, shardings, tokenizer, shapes,
                 lora), train_iter


def checkpointer(config, workdir, *, track_best: bool = True, base=None):
    """The run's Checkpointer; it scores checkpoints by `best_metric` only when eval computes it.

    With `lora.save_adapters_only`, pass the frozen base as `base`: it is left out of every save
    and put back into every restore (train/adapters.py)."""
    from transformer_jax.checkpoint import Checkpointer

    periodic = config.eval_every or config.get("eval_every_minutes", 0.0)
    best = config.best_metric if track_best and periodic and config.best_metric else None
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                        best_metric=best, best_mode=config.best_mode, async_save=config.async_checkpoints)
    return adapters.AdaptersOnly(ckpt, base) if base is not None and adapters.adapters_only(config) else ckpt


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
    ckpt = checkpointer(config, workdir, base=s.state.frozen)
    step = ckpt.best_step() if which == "best" else None
    restored = ckpt.restore(abstract_state(s.state, s.shardings), step=step)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    return s, restored[0], restored[2]
