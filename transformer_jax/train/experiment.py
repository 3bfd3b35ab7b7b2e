"""The experiment config (ml_collections): its model section, attention specs from strings, and the
one validation that runs before anything is built, written or compiled.

`model_section` lists every `TransformerConfig` field (so each can be overridden from the command
line, `--config.model.FIELD=VALUE`, including fields added later); fields whose default is None or
an attention spec are untyped placeholders, so `--config.model.head_dim=64` and
`--config.model.encoder_attention='Windowed(128)'` parse. Spec strings are read with `ast`: only
calls of the spec classes `transformer_jax.attention` exports, with literal arguments.

The task (`config_task`, what is learned) comes from the dataset (`config.data.dataset`, which data)
through the registry in transformer_jax/tasks/registry.py; the model class follows from it (`build_model`). `config.model_type` is
'' (the task's model) or is checked against the task, picking among the tasks a dataset offers.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re

import ml_collections
from ml_collections.config_dict import FieldReference

from transformer_jax import attention, tasks
from transformer_jax.config import TransformerConfig, preset
from transformer_jax.tasks.registry import MODEL_TYPES
from transformer_jax.train.adapters import check_config as check_lora
from transformer_jax.train.budget import check_minutes
from transformer_jax.train.distill import check_config as check_distill
from transformer_jax.train.profile import parse_profile_steps

NONFINITE = ("stop", "skip")
SYNTHETIC = "synthetic"
MODEL_CONFIG = "model_config.pkl"  # the architecture an `init_from` run decided, kept in its workdir (build.py)
EVAL_METRICS = ("eval_loss", "eval_nll", "eval_accuracy", "eval_perplexity")  # what `evaluate.evaluate_loss` returns


# ----------------------------------------------------------------------------------------------
# Attention specs from strings


def spec_classes() -> dict[str, type]:
    """The attention spec classes a string may name (the registry `transformer_jax.attention.SPECS`), by name."""
    return {cls.__name__: cls for cls in attention.SPECS}


def _is_spec(value) -> bool:
    return not isinstance(value, type) and isinstance(value, attention.AttentionSpec)


def parse_attention(text: str, field: str = "attention"):
    """'Windowed(128)' -> Windowed(window=128); '(Dense(), Windowed(64))' -> a tuple (one per layer).

    Never `eval`: the expression must be a spec class name, or a call of one with literal
    arguments, or a tuple/list of those.
    """
    classes = spec_classes()

    def fail(why: str):
        raise ValueError(f"config.model.{field}={text!r}: {why}; valid specs: {', '.join(sorted(classes))}, "
                         "e.g. 'Dense()', 'Windowed(128)', 'BlockSparse(block_size=64)', or a tuple of "
                         "them with one per layer")

    def one(node):
        call = node if isinstance(node, ast.Call) else None
        name_node = call.func if call else node
        if not isinstance(name_node, ast.Name):
            fail(f"{ast.unparse(node)!r} is not an attention spec")
        if name_node.id not in classes:
            fail(f"{name_node.id!r} is not an attention spec")
        args, kwargs = (call.args, call.keywords) if call else ([], [])
        if any(k.arg is None for k in kwargs) or any(isinstance(a, ast.Starred) for a in args):
            fail("arguments must be literals")
        try:
            values = [ast.literal_eval(a) for a in args]
            named = {k.arg: ast.literal_eval(k.value) for k in kwargs}
        except ValueError:
            fail("arguments must be literals (numbers, strings, tuples)")
        try:
            return classes[name_node.id](*values, **named)
        except (TypeError, ValueError) as err:
            fail(str(err))

    try:
        tree = ast.parse(str(text).strip(), mode="eval").body
    except SyntaxError:
        fail("not a spec expression")
    if isinstance(tree, (ast.Tuple, ast.List)):
        return tuple(one(node) for node in tree.elts)
    return one(tree)


def _attention_value(value, field: str):
    """A spec, a tuple of specs, or their string forms -> specs (other values pass through)."""
    if isinstance(value, str):
        return parse_attention(value, field)
    if isinstance(value, (tuple, list)):
        return tuple(parse_attention(v, field) if isinstance(v, str) else v for v in value)
    return value


# ----------------------------------------------------------------------------------------------
# The model section


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def attention_fields() -> tuple[str, ...]:
    """TransformerConfig fields that hold attention specs (by their default's type)."""
    return tuple(f.name for f in dataclasses.fields(TransformerConfig) if _is_spec(_default(f)))


def _untyped(f: dataclasses.Field) -> bool:
    """Fields the command line must set to values of another type than the default's: optional ones,
    attention specs, and unions (`moe_layers: int | tuple[int, ...]`)."""
    return _default(f) is None or _is_spec(_default(f)) or "|" in str(f.type)


def model_section(preset_name: str = "", **values) -> ml_collections.ConfigDict:
    """`config.model`: every TransformerConfig field, from its defaults (or a preset's), then `values`.

    Fields whose default is None or an attention spec become untyped placeholders, so the command
    line can give them an int, a spec string or a tuple.
    """
    base = preset(preset_name) if preset_name else TransformerConfig()
    fields = dataclasses.fields(TransformerConfig)
    unknown = sorted(set(values) - {f.name for f in fields})
    if unknown:
        raise ValueError(f"config.model.{unknown[0]} is not a TransformerConfig field; "
                         f"valid: {', '.join(f.name for f in fields)}")
    section = ml_collections.ConfigDict()
    for f in fields:
        value = values.get(f.name, getattr(base, f.name))
        section[f.name] = FieldReference(value, field_type=object) if _untyped(f) else value
    return section


def model_config(config: ml_collections.ConfigDict) -> TransformerConfig:
    """`config.model` -> TransformerConfig; errors name the field (`config.model.X`).

    A `preset` key (configs saved by older versions) is applied first, the other keys over it.
    """
    fields = model_fields(config)
    name = fields.pop("preset", "") or ""
    valid = [f.name for f in dataclasses.fields(TransformerConfig)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"config.model.{unknown[0]} is not a TransformerConfig field; valid: {', '.join(valid)}")
    try:
        return preset(name, **fields) if name else TransformerConfig(**fields)
    except (ValueError, TypeError) as err:
        raise ValueError(f"config.model: {err}") from None


def model_fields(config) -> dict:
    """The fields `config.model` sets, attention specs parsed; a None where the field's default is
    not None means "not set" (fine-tuning configs leave the architecture to the checkpoint). Without
    `init_from`, a fine-tuning config's `scratch_model` gives the architecture, `config.model` on top."""
    defaults = {f.name: _default(f) for f in dataclasses.fields(TransformerConfig)}
    given = dict(config.get("model", None) or {})
    if not config.get("init_from", "") and config.get("scratch_model", None):
        given = {**dict(config.scratch_model), **{k: v for k, v in given.items() if v is not None}}
    fields = {k: v for k, v in given.items() if not (v is None and defaults.get(k, 0) is not None)}
    for field in attention_fields():
        if field in fields:
            fields[field] = _attention_value(fields[field], field)
    return fields


def files_task(config) -> tasks.Task:
    """The fine-tuning task `config.task` names (tasks.FINETUNE) on the user's files: its labels from
    `config.data.labels`, else from the train files (sorted; numbers that are not all integers:
    regression); its options from `config.data` (prefix, doc_stride) and the checkpoint's generation
    settings (`init_from`'s generation_config.json)."""
    name = config.task
    if name not in tasks.FINETUNE:
        raise ValueError(f"config.task={name!r} is not a task; valid: {', '.join(tasks.FINETUNE)}")
    cls = tasks.FINETUNE[name]
    options = {}
    role = getattr(cls, "label_role", "label")
    if role is not None:
        labels = tuple(config.data.get("labels", ()) or ())
        if not labels:
            from transformer_jax.data.files import derive_labels

            if not config.data.get("train_files", ""):
                raise ValueError(f"config.task={name!r} needs config.data.train_files (or config.data.labels)")
            columns = {k: v for k, v in dict(config.data.get("columns", {}) or {}).items() if v}
            labels = derive_labels(config.data.train_files, role, columns=columns)
        options["labels"] = None if labels is None or tuple(labels) == ("<regression>",) else tuple(labels)
    for key in ("prefix", "doc_stride"):
        if key in config.data and key in {f.name for f in dataclasses.fields(cls)}:
            options[key] = config.data[key]
    if "generation" in {f.name for f in dataclasses.fields(cls)}:
        options["generation"] = generation_config(config)
    if "max_new_tokens" in {f.name for f in dataclasses.fields(cls)}:
        options["max_new_tokens"] = config.decode.max_len
    return cls(**options)


def generation_config(config):
    """The generation settings the run recorded (`config.generation`), else a Hugging Face
    `init_from`'s (`generation_config.json`), else the library's ids (start BOS, end EOS)."""
    from transformer_jax.decode import GenerationConfig
    from transformer_jax.pretrained import load_generation_config
    from transformer_jax.train import checkpoint_source

    if config.get("generation", None):  # recorded by the run (train/build.py epochs_to_steps)
        return GenerationConfig(**dict(config.generation))
    path = config.get("init_from", "") or ""
    return load_generation_config(path) if checkpoint_source.is_pretrained_dir(path) else GenerationConfig()


def config_task(config) -> tasks.Task:
    """The task the experiment trains: `config.data.dataset`'s (the registry, or `config.data.text_keys`),
    switched by `config.model_type` where the dataset allows (a text corpus trains either language
    model); an impossible pairing is a named error. The synthetic task follows `model_type`."""
    if config.get("task", ""):
        return files_task(config)
    model_type = config.get("model_type", "") or ""
    if config.data.dataset == SYNTHETIC:
        return tasks.synthetic(model_type)
    keys = tuple(config.data.get("text_keys", ())) or None
    features = None
    if keys is not None and len(keys) == 2:  # text or label second: the stored features say
        from transformer_jax.data.sources import open_source

        features = open_source(config.data.dataset, "train", data_dir=config.data.data_dir or None
                               ).dataset_info.features
    task = tasks.resolve(config.data.dataset, model_type, keys, features)
    return task.with_options(**dict(config.get("vit", None) or {}))  # image tasks: patch size, shift


def build_model(config: ml_collections.ConfigDict, task: tasks.Task | None = None):
    """The model class follows from the task; with `config.init_from` the architecture follows from
    that checkpoint (train/checkpoint_source.py)."""
    return build_model_and_source(config, task)[0]


def build_model_and_source(config: ml_collections.ConfigDict, task: tasks.Task | None = None):
    """(model, the init_from checkpoint's variables when it was read whole here, else None)."""
    task = config_task(config) if task is None else task
    if not config.get("init_from", ""):
        cfg = model_config(config)
        if getattr(task, "num_labels", None) is not None:  # the head's size is the task's (its labels)
            cfg = cfg.replace(num_classes=task.num_labels)
        return task.make_model(cfg), None
    from transformer_jax.train import checkpoint_source

    model_class = task.model_class().__name__
    given = model_fields(config)
    num_classes = getattr(task, "num_labels", None)
    if num_classes is None and model_class == "EncoderClassifier":
        num_classes = given.get("num_classes")
    cfg, variables = checkpoint_source.decided_config(config, given, model_class, num_classes,
                                                      getattr(task, "labels", None))
    return task.make_model(cfg), variables


# ----------------------------------------------------------------------------------------------
# Validation: everything that can be checked without data or compilation


def _check_choice(section, name: str, valid, prefix: str = "") -> None:
    value = section[name]
    if value not in valid:
        raise ValueError(f"config.{prefix}{name}={value!r} is not one of {', '.join(valid)}")


def _check_int(section, prefix: str, name: str, minimum: int) -> None:
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"config.{prefix}{name}={value!r} must be {what}")


def _check_float(section, prefix: str, name: str, low: float, high: float = math.inf, *,
                 open_low: bool = False, open_high: bool = False) -> None:
    value = section[name]
    bad = (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
           or value < low or (open_low and value == low) or value > high or (open_high and value == high))
    if bad:
        if high == math.inf:
            what = f"a number > {low:g}" if open_low else f"a number >= {low:g}"
        else:
            what = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"config.{prefix}{name}={value!r} must be {what}")


def check_workdir(workdir: str) -> None:
    """The workdir is a directory or can be made one (its parent exists and is a directory)."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--workdir={workdir!r} is a file, not a directory")
    parent = os.path.dirname(path)
    ancestor = parent
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"--workdir={workdir!r} lies under {ancestor!r}, which is a file, not a directory")
    if not os.path.isdir(parent):
        raise ValueError(f"--workdir={workdir!r}: its parent directory {parent!r} does not exist")


def check_batch_fits(config, task: tasks.Task, batch_keys) -> None:
    """The batches carry what the task's model reads (checked on the first batch, before init)."""
    missing = [k for k in task.needs if k not in batch_keys]
    if missing:
        raise ValueError(f"a {task.name} task ({task.model_type}) needs batches with {', '.join(task.needs)}; "
                         f"config.data.dataset={config.data.dataset!r} yields {', '.join(sorted(batch_keys))}")


def _check_init_from(config, workdir: str | None = None) -> None:
    """`init_from` names one of our workdirs (with a checkpoint) or a Hugging Face directory (unless
    `workdir` has started from it already and kept its architecture: train/build.py MODEL_CONFIG)."""
    path = config.get("init_from", "") or ""
    kept = workdir is not None and os.path.exists(os.path.join(workdir, MODEL_CONFIG))
    if path and not kept:
        from transformer_jax.checkpoint import committed_steps

        if not os.path.isdir(path):
            raise ValueError(f"config.init_from={path!r}: no such directory (want a workdir with checkpoints, "
                             "or a Hugging Face model directory with config.json)")
        ours = committed_steps(os.path.join(path, "checkpoints")) and os.path.exists(os.path.join(path, "config.pkl"))
        if not ours and not os.path.exists(os.path.join(path, "config.json")):
            raise ValueError(f"config.init_from={path!r} holds neither a checkpoint (checkpoints/<step> and "
                             "config.pkl, as `train` writes) nor a Hugging Face config.json")
    patterns = config.get("freeze", ()) or ()
    if isinstance(patterns, str):
        raise ValueError(f"config.freeze={patterns!r} must be a tuple of regular expressions, e.g. "
                         "('encoder/layer_0/.*',)")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as err:
            raise ValueError(f"config.freeze: {pattern!r} is not a regular expression ({err})") from None


def _check_counts(config) -> None:
    for name in ("batch_size", "micro_batches", "log_every", "checkpoint_every", "keep_checkpoints"):
        _check_int(config, "", name, 1)
    for name in ("num_train_steps", "eval_every", "eval_batches"):
        _check_int(config, "", name, 0)
    for name in ("beam_size", "max_len", "batch_size"):
        _check_int(config.decode, "decode.", name, 1)
    _check_int(config.decode, "decode.", "max_examples", 0)


def _check_batch(config, sizes: dict[str, int], process_count: int) -> None:
    shards = sizes["data"] * sizes["fsdp"] * sizes["expert"]
    if config.batch_size % shards:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the batch shards "
                         f"mesh.data×mesh.fsdp×mesh.expert={shards}; use a multiple of {shards}")
    if config.batch_size % process_count:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {process_count} processes")
    if config.batch_size % config.micro_batches:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by "
                         f"config.micro_batches={config.micro_batches}")
    if (config.batch_size // config.micro_batches) % shards:
        raise ValueError(f"config.batch_size/config.micro_batches={config.batch_size // config.micro_batches} "
                         f"must be divisible by the batch shards mesh.data×mesh.fsdp×mesh.expert={shards}")


def _check_optimizer(config) -> None:
    from transformer_jax.train import optim

    opt, sched = config.optimizer, config.schedule
    _check_choice(opt, "name", optim.OPTIMIZERS, "optimizer.")
    _check_choice(sched, "name", optim.SCHEDULES, "schedule.")
    _check_float(opt, "optimizer.", "learning_rate", 0.0, open_low=True)
    for name in ("weight_decay", "clip_norm", "eps"):
        if name in opt:
            _check_float(opt, "optimizer.", name, 0.0)
    for name in ("b1", "b2"):
        if name in opt:
            _check_float(opt, "optimizer.", name, 0.0, 1.0, open_high=True)
    if "end_learning_rate" in sched:
        _check_float(sched, "schedule.", "end_learning_rate", 0.0)
    if sched.warmup_steps < 0 or (sched.name == "inverse_sqrt" and sched.warmup_steps == 0):
        raise ValueError(f"config.schedule.warmup_steps={sched.warmup_steps} must be positive")


def validate_config(config: ml_collections.ConfigDict, workdir: str | None = None,
                    num_devices: int | None = None, process_count: int | None = None) -> dict[str, int]:
    """Check everything that can be checked without data or compilation; return the mesh sizes.

    Errors name the field, the value and what would be valid.
    """
    import jax

    from transformer_jax import sharding as shd

    num_devices = jax.device_count() if num_devices is None else num_devices
    process_count = jax.process_count() if process_count is None else process_count
    if workdir is not None:
        check_workdir(workdir)
    _check_choice(config, "model_type", ("", *MODEL_TYPES))
    vocab = model_config(config).vocab_size
    spm = config.data.dataset != SYNTHETIC and config.data.tokenizer == "sentencepiece"
    if spm and (config.data.vocab_size or 0) > vocab:
        raise ValueError(f"config.model.vocab_size={vocab} is smaller than config.data.vocab_size="
                         f"{config.data.vocab_size} (the SentencePiece vocabulary); set it to at least "
                         f"{config.data.vocab_size}")
    config_task(config)  # the task and model fit (a named error otherwise)
    _check_init_from(config, workdir)
    check_lora(config)  # lora.rank / alpha / targets / save_adapters_only; freeze beside LoRA
    check_distill(config)  # distill.teacher / temperature / alpha / init_from_teacher
    sizes = shd.resolve_mesh_shape(dict(config.mesh), num_devices)
    _check_counts(config)
    check_minutes(config)
    _check_batch(config, sizes, process_count)
    shd.check_experts(model_config(config).num_experts, sizes["expert"])
    _check_optimizer(config)
    _check_choice(config, "nonfinite", NONFINITE)
    parse_profile_steps(config.get("profile_steps", ""))
    _check_float(config, "", "label_smoothing", 0.0, 1.0, open_high=True)
    _check_float(config, "", "z_loss", 0.0)
    if config.best_metric not in ("", *EVAL_METRICS):
        raise ValueError(f"config.best_metric={config.best_metric!r} is not an eval metric; valid: "
                         f"{', '.join(EVAL_METRICS)}, or '' to keep no best checkpoint")
    _check_choice(config, "best_mode", ("min", "max"))
    return sizes
