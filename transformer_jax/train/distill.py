"""Knowledge distillation (Hinton et al. 2015; DistilBERT, Sanh et al. 2019) in the trainer.

    --config.distill.teacher=DIR        one of our workdirs, or a Hugging Face model directory
    --config.distill.temperature=T      softens both distributions (default 2)
    --config.distill.alpha=A            weight of the hard-target cross-entropy (default 0.5)
    --config.distill.init_from_teacher=every_other | "0,2,5"   student layer i <- teacher layer map[i]
    --config.distill.sequence_level=True   translation: the teacher's beam outputs are the targets
                                        (Kim & Rush 2016 §3.2; train/sequence_kd.py)

The loss is a wrapper around the task's own loss sums (train/step.py `_loss_sums(..., extra=...)`):

    loss = A · CE(student, targets) + (1 - A) · T² · KL(softmax(teacher/T) || softmax(student/T))

the KL taken over the last axis of every output the model returns (classes, vocabulary, or the
positions of a QA span), weighted by the task's own target weights, so classification, token
classification, QA, masked and causal LM and seq2seq (word-level KD, Kim & Rush 2016 §3.1) share
one loss. The T² keeps the soft-target gradients on the scale of the hard ones (Hinton et al. §2).

The teacher's forward runs inside the same jitted, sharded train step: its parameters are a third,
non-trained argument of the step, placed by the same logical-axis rules as the student's. They are
not part of the train state: a resumed run reloads them from DIR, so checkpoints stay the
student's alone and resume stays exact. With alpha = 1 there is no soft term, and the teacher is
not in the step at all (it may still initialise the student, or supply sequence-level targets).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict

from transformer_jax.train import checkpoint_source, sequence_kd
from transformer_jax.train.state import abstract_state, abstract_train_state
from transformer_jax.train.warm_start import _in_layout, load_matching, summarize

EVERY_OTHER = "every_other"


def section(config):
    """The run's distill settings, or None when it has no teacher (configs saved before `distill` existed too)."""
    d = config.get("distill", None)
    return d if d is not None and d.get("teacher", "") else None


# ----------------------------------------------------------------------------------------------
# The loss


def soft_target_sums(student, teacher, weights: jax.Array, temperature: float) -> jax.Array:
    """Σ_rows weight · T² · KL(softmax(teacher/T) || softmax(student/T)), the KL over the last axis.

    `student`, `teacher`: arrays (or matching tuples of arrays, e.g. QA's start and end logits,
    averaged) of shape weights.shape + (K,). The teacher gets no gradient.
    """
    s_leaves, t_leaves = jax.tree.leaves(student), jax.tree.leaves(teacher)
    total = jnp.zeros((), jnp.float32)
    w = weights.astype(jnp.float32)
    for s, t in zip(s_leaves, t_leaves):
        log_p_s = jax.nn.log_softmax(s.astype(jnp.float32) / temperature, axis=-1)  # [... K]
        log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(t).astype(jnp.float32) / temperature, axis=-1)
        kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)  # [...] like weights
        total = total + jnp.sum(w * kl)
    return total * (temperature ** 2) / len(s_leaves)


def mix(sums: dict, soft: jax.Array, alpha: float) -> dict:
    """The task's loss sums with the soft-target term mixed in (the hard CE weighted by alpha);
    `kd_loss` is reported beside the plain `nll`."""
    return {**sums, "loss": alpha * sums["loss"] + (1.0 - alpha) * soft, "kd_loss": soft}


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The teacher model, its parameters (placed on the mesh) and their shardings, and the settings."""

    model: Any
    params: Any
    shardings: Any
    temperature: float
    alpha: float
    where: str

    @property
    def in_step(self) -> bool:
        """Whether the train step runs the teacher: only when soft targets are mixed in (alpha < 1);
        with alpha = 1 the teacher serves init_from_teacher or sequence-level targets alone."""
        return self.alpha < 1.0

    def abstract_params(self):
        """The parameters' shapes with their shardings (what the jitted step is lowered for)."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.params,
                            self.shardings)

    def loss_hook(self, task, teacher_params):
        """`extra(outputs, batch, sums) -> sums` for train/step.py's `_loss_sums`: the teacher's
        deterministic forward on the same inputs, and the mixed loss."""

        def extra(outputs, batch, sums):
            args, kwargs = task.model_inputs(batch)
            teacher_out = self.model.apply({"params": teacher_params}, *args, **kwargs, deterministic=True)
            _, weights = task.targets_and_weights(batch)
            return mix(sums, soft_target_sums(outputs, teacher_out, weights, self.temperature), self.alpha)

        return extra


# ----------------------------------------------------------------------------------------------
# Checks


def check_config(config) -> None:
    """`config.distill`'s values (before anything is built): a teacher directory of the right kind,
    T > 0, alpha in [0, 1], a readable layer map; sequence-level settings (train/sequence_kd.py)."""
    d = section(config)
    if d is None:
        sequence_kd.check_config(config)  # sequence_level=True without a teacher: named
        return
    path = d.teacher
    if not os.path.isdir(path):
        raise ValueError(f"config.distill.teacher={path!r}: no such directory (want one of our workdirs with "
                         "checkpoints, or a Hugging Face model directory with config.json)")
    if not checkpoint_source.is_workdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        raise ValueError(f"config.distill.teacher={path!r} holds neither a checkpoint (checkpoints/<step> and "
                         "config.pkl, as `train` writes) nor a Hugging Face config.json")
    t = d.get("temperature", 2.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(f"config.distill.temperature={t!r} must be a number > 0")
    a = d.get("alpha", 0.5)
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
        raise ValueError(f"config.distill.alpha={a!r} must be a number in [0, 1] (the hard-target weight)")
    parse_layer_map(d.get("init_from_teacher", ""))
    lora = config.get("lora", None)
    if lora is not None and lora.get("rank", 0) and d.get("init_from_teacher", ""):
        raise ValueError(f"config.distill.init_from_teacher={d.init_from_teacher!r} initialises the whole student, "
                         f"but config.lora.rank={lora.rank} trains adapters over a base; set one")
    if config.get("init_from", "") and d.get("init_from_teacher", ""):
        raise ValueError(f"config.init_from={config.init_from!r} and config.distill.init_from_teacher="
                         f"{d.init_from_teacher!r} both initialise the student; set one")
    sequence_kd.check_config(config)


def parse_layer_map(value) -> str | tuple[int, ...] | None:
    """'' -> None; 'every_other' -> itself; '0,2,5' / '(0, 2, 5)' / a tuple -> (0, 2, 5)."""
    if value is None or value == "" or value == ():
        return None
    if value == EVERY_OTHER:
        return EVERY_OTHER
    if isinstance(value, (tuple, list)):
        items = list(value)
    else:
        text = str(value).strip().strip("()[]")
        items = [x for x in re.split(r"[,\s]+", text) if x]
    try:
        layers = tuple(int(x) for x in items)
    except (TypeError, ValueError):
        layers = ()
    if not layers or any(i < 0 for i in layers) or any(isinstance(x, bool) for x in items):
        raise ValueError(f"config.distill.init_from_teacher={value!r} must be {EVERY_OTHER!r} (DistilBERT: student "
                         "layer i <- teacher layer 2i) or teacher layer indices, one per student layer, e.g. '0,2,5'")
    return layers


def check_compatible(teacher_cfg, teacher_class: str, student_cfg, student_class: str, where: str, path: str) -> None:
    """Same model class, vocabulary and number of classes: otherwise an error naming both."""
    tc, sc = teacher_cfg, student_cfg
    if teacher_class != student_class:
        raise ValueError(f"config.distill.teacher={path!r} is a {teacher_class} ({where}), but the student is a "
                         f"{student_class}; distil between models of the same task")
    if tc.vocab_size != sc.vocab_size:
        raise ValueError(f"config.distill.teacher={path!r} has vocab_size={tc.vocab_size} ({where}), but the student "
                         f"has vocab_size={sc.vocab_size}; teacher and student must share the tokenizer")
    if student_class in ("EncoderClassifier", "TokenClassifier") and tc.num_classes != sc.num_classes:
        raise ValueError(f"config.distill.teacher={path!r} has num_classes={tc.num_classes} ({where}), but the "
                         f"student has num_classes={sc.num_classes}; distil between models of the same labels")
    if student_class in ("EncoderClassifier", "TokenClassifier") and sc.num_classes == 1:
        raise ValueError(f"config.distill.teacher={path!r}: a regression head (num_classes=1) has no "
                         "distribution to distil")


def check_teacher_early(config) -> None:
    """Before anything is written: a teacher workdir's saved config against the student's (cheap; a
    Hugging Face teacher, or a student with init_from, is checked when the teacher is loaded)."""
    d = section(config)
    if d is None or not checkpoint_source.is_workdir(d.teacher) or config.get("init_from", ""):
        return
    from transformer_jax.train.experiment import config_task, model_config

    tcfg, where, tclass, _ = checkpoint_source.source_config(d.teacher)
    check_compatible(tcfg, tclass, model_config(config), config_task(config).model_class().__name__, where,
                     d.teacher)


def _check_models(teacher_model, student_model, where: str, path: str) -> None:
    check_compatible(teacher_model.cfg, type(teacher_model).__name__, student_model.cfg,
                     type(student_model).__name__, where, path)


# ----------------------------------------------------------------------------------------------
# Loading the teacher


def _teacher_model_and_params(path: str, mesh, task, example, student_model):
    """(model, params on `mesh`, their shardings, description) of the teacher at `path`."""
    if checkpoint_source.is_workdir(path):
        from transformer_jax.train import build
        from transformer_jax.train.experiment import build_model, config_task

        saved = build.load_config(path)
        if saved.get("lora", None) is not None and saved.lora.get("rank", 0):
            raise ValueError(f"config.distill.teacher={path!r} is a LoRA run: its checkpoints hold adapters; "
                             "merge them (tj.merge_lora) into a model directory first")
        model = build_model(saved, config_task(saved))
        _check_models(model, student_model, os.path.join(path, "config.pkl"), path)
        abstract, shardings = abstract_train_state(model, optax.identity(), example, mesh, task=task)
        ckpt = build.checkpointer(saved, path, track_best=False)
        try:
            params, step = ckpt.restore_params(abstract_state(abstract, shardings).params)
        finally:
            ckpt.close()
        return model, params, shardings.params, f"step {step} of {path}"
    from transformer_jax.pretrained import from_pretrained

    model, variables = from_pretrained(path)
    _check_models(model, student_model, os.path.join(path, "config.json"), path)
    _, shardings = abstract_train_state(model, optax.identity(), example, mesh, task=task)
    params = jax.tree.map(lambda x, s: jax.device_put(x, s), dict(variables["params"]), dict(shardings.params))
    return model, params, shardings.params, f"Hugging Face checkpoint {path}"


def load_teacher(config, mesh, task, example, student_model, log=print) -> Teacher | None:
    """The run's Teacher, its parameters on `mesh`; None without `config.distill.teacher`, or when
    the run has no use for it in training (alpha = 1 and no init_from_teacher)."""
    d = section(config)
    if d is None:
        return None
    if float(d.alpha) >= 1.0 and parse_layer_map(d.get("init_from_teacher", "")) is None:
        log(f"distill: alpha={d.alpha}: no soft targets, the teacher stays out of the train step"
            + (" (its translations are the targets)" if sequence_kd.enabled(config) else ""))
        return None
    model, params, shardings, where = _teacher_model_and_params(d.teacher, mesh, task, example, student_model)
    log(f"distill: teacher {type(model).__name__} ({where}), T={d.temperature}, alpha={d.alpha}")
    return Teacher(model, params, shardings, float(d.temperature), float(d.alpha), where)


# ----------------------------------------------------------------------------------------------
# Student initialisation from the teacher


def _per_layer(params, cfg) -> dict:
    if getattr(cfg, "scan_layers", False):
        from transformer_jax.scan import unstack_layers

        return unstack_layers(dict(params), cfg)
    return dict(params)


def layer_sources(layer_map, student_layers: int, teacher_layers: int, stack: str) -> tuple[int, ...]:
    """Teacher layer indices, one per student layer of `stack` (`every_other`: 0, 2, 4, ...)."""
    if layer_map == EVERY_OTHER:
        layers = tuple(2 * i for i in range(student_layers))
    else:
        layers = tuple(layer_map)
        if len(layers) != student_layers:
            raise ValueError(f"config.distill.init_from_teacher={layers!r} names {len(layers)} layers, but the "
                             f"student's {stack} has {student_layers}; give one teacher layer per student layer")
    if max(layers, default=0) >= teacher_layers:
        raise ValueError(f"config.distill.init_from_teacher={layer_map!r}: the student's {stack} layers take teacher "
                         f"layers {layers}, but the teacher's {stack} has {teacher_layers} (0..{teacher_layers - 1})")
    return layers


def _count(tree: dict, stack: str) -> int:
    return sum(1 for k in tree.get(stack, {}) if re.fullmatch(r"layer_\d+", k))


def student_source(teacher_params, teacher_cfg, student_params, student_cfg, layer_map) -> dict[str, Any]:
    """The teacher's parameters renamed for the student ('/'-joined paths): in each layer stack
    (encoder, decoder), student layer i <- teacher layer map[i]; everything else (embeddings,
    norms, pooler, heads) by its own path. In the student's layout (stacked when it scans)."""
    teacher = _per_layer(teacher_params, teacher_cfg)
    student = _per_layer(jax.eval_shape(lambda p: p, student_params), student_cfg)
    out = {k: v for k, v in teacher.items() if k not in ("encoder", "decoder")}
    for stack in ("encoder", "decoder"):
        if stack not in teacher or stack not in student:
            continue
        layers = layer_sources(layer_map, _count(student, stack), _count(teacher, stack), stack)
        renamed = {k: v for k, v in teacher[stack].items() if not re.fullmatch(r"layer_\d+", k)}
        for i, j in enumerate(layers):
            renamed[f"layer_{i}"] = teacher[stack][f"layer_{j}"]
        out[stack] = renamed
    return _in_layout(flatten_dict(out, sep="/"), student_cfg, "the teacher")


def init_student(state, shardings, teacher: Teacher, student_model, layer_map, log=print):
    """`state` with the student's parameters copied from the teacher through the layer map (a fresh run)."""
    source = student_source(teacher.params, teacher.model.cfg, state.params, student_model.cfg, layer_map)
    params, loaded, fresh = load_matching(state.params, shardings.params, source, "the teacher")
    log(f"distill: student initialised from the teacher (layers {layer_map}): {len(loaded)} parameters loaded, "
        f"fresh: {summarize(fresh)}")
    return state.replace(params=params)
