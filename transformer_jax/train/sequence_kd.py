"""Sequence-level knowledge distillation for sequence-to-sequence tasks (Kim & Rush 2016, §3.2, "Seq-KD").

    --config.distill.teacher=DIR --config.distill.sequence_level=True
    --config.distill.beam_size=4 --config.distill.length_penalty=0.6

Word-level KD matches the teacher's distribution token by token on the reference prefixes.
Sequence-level KD instead trains the student on the teacher's *mode*, approximated by beam search:
every source of the train split is translated once by the teacher with the library's beam search
(`transformer_jax.decode.generate`: through `tasks.seq2seq.translate` for a translation task, and
through the task's own `generate` for `config.task=seq2seq` on files, with the checkpoint's
generation settings and `decode.max_len` new tokens), and those outputs replace the references
as the student's targets. The sources, their order and the pipeline (shuffle, packing,
iterator state) are the same as without a teacher; only the target text differs.

The outputs are made once per workdir and cached there:

    <workdir>/sequence_kd/targets.jsonl   one JSON string per train record, in the split's stored order
    <workdir>/sequence_kd/manifest.json   teacher and its checkpoint, beam settings, the dataset, split
                                          and a sha256 of its source texts, the sha256 of targets.jsonl

each written under a temporary name and renamed, the manifest last (a manifest means a complete
cache). A later start (a resume) reuses the cache when its manifest equals what this run would
generate. When it does not (another teacher, teacher checkpoint, beam setting, length or train
data), a workdir without a checkpoint regenerates it (nothing was trained on the old targets); a
workdir with checkpoints is a `ValueError` naming the differing field, both values and the file:
its checkpoints were trained on the cached targets, and changing them under a resumed run would not
continue the same run. A cache whose targets do not match the manifest's hash is treated the same.

With `distill.alpha` = 1 the loss is the plain cross-entropy on the teacher's outputs (Kim & Rush's
Seq-KD) and the teacher's forward is left out of the train step; with alpha < 1 word-level KD on
those same sequences is mixed in (their "Seq-KD + Word-KD"), through train/distill.py's loss.
The targets are stored as text and tokenized again by the student's tokenizer, which is the
teacher's (train/distill.py checks the vocabularies).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time

import jax

from transformer_jax import tasks
from transformer_jax.tasks.seq2seq import Seq2Seq
from transformer_jax.train import checkpoint_source
from transformer_jax.train.logs import write_text_atomic

DIRNAME = "sequence_kd"
MANIFEST = "manifest.json"
TARGETS = "targets.jsonl"
# What a cache must agree on to be reused (the rest of the manifest is informational).
MATCH_KEYS = ("teacher", "teacher_checkpoint", "beam_size", "length_penalty", "max_len", "src_len", "dataset",
              "split", "examples", "source_sha256", "target_feature")


@dataclasses.dataclass(frozen=True)
class BeamSettings:
    """How the teacher translates the train split: `max_len` output tokens (EOS included), sources cut
    to `src_len` tokens as the training pipeline cuts them, `batch_size` sources per call."""

    beam_size: int
    length_penalty: float
    max_len: int
    src_len: int
    batch_size: int


def enabled(config) -> bool:
    d = config.get("distill", None)
    return bool(d is not None and d.get("sequence_level", False))


def check_config(config) -> None:
    """`distill.sequence_level` and its beam settings: a teacher, a translation task, beam_size >= 1,
    a finite length_penalty (named errors before anything is built)."""
    d = config.get("distill", None)
    if d is None:
        return
    on = d.get("sequence_level", False)
    if not isinstance(on, bool):
        raise ValueError(f"config.distill.sequence_level={on!r} must be True or False")
    if not on:
        return
    if not d.get("teacher", ""):
        raise ValueError("config.distill.sequence_level=True needs config.distill.teacher (a translation workdir "
                         "or Hugging Face directory whose beam-search outputs become the targets)")
    beam = d.get("beam_size", 4)
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"config.distill.beam_size={beam!r} must be a positive integer (1: greedy)")
    lp = d.get("length_penalty", 0.6)
    if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not math.isfinite(lp):
        raise ValueError(f"config.distill.length_penalty={lp!r} must be a finite number (0.6: GNMT's)")
    from transformer_jax.train.experiment import config_task

    task = config_task(config)
    if not isinstance(task, (tasks.Translation, Seq2Seq)):
        raise ValueError(f"config.distill.sequence_level=True needs a sequence-to-sequence task (translation, "
                         f"seq2seq: its targets are the teacher's outputs); "
                         + (f"config.task={config.task!r}" if config.get("task", "") else
                            f"config.data.dataset={config.data.dataset!r} is a {task.name} task")
                         + "; use word-level KD (sequence_level=False) there")
    if isinstance(task, Seq2Seq) and float(lp) != GENERATE_LENGTH_PENALTY:
        raise ValueError(f"config.distill.length_penalty={lp!r}: a seq2seq task generates with the checkpoint's "
                         f"settings and beam search's length penalty {GENERATE_LENGTH_PENALTY}; leave it so")


GENERATE_LENGTH_PENALTY = 0.6  # `decode.generate`'s default, which `Seq2Seq.generate` uses


def features(task) -> tuple[str, str]:
    """The record keys of the source text and the target text the teacher's outputs replace."""
    return (task.source, task.target) if isinstance(task, tasks.Translation) else ("source", "target")


def settings(config, task) -> BeamSettings:
    """The run's beam settings: outputs as long as a training target may be (`data.max_tgt_len`, EOS
    included; a seq2seq task: its `max_new_tokens`, `decode.max_len`), sources cut to
    `data.max_src_len`, `decode.batch_size` sources per call."""
    d = config.distill
    return BeamSettings(beam_size=int(d.get("beam_size", 4)), length_penalty=float(d.get("length_penalty", 0.6)),
                        max_len=getattr(task, "max_new_tokens", config.data.max_tgt_len),
                        src_len=config.data.max_src_len, batch_size=config.decode.batch_size)


# ----------------------------------------------------------------------------------------------
# The manifest


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_fingerprint(sources: list[str]) -> str:
    """sha256 of the source texts in order (JSON-encoded, so boundaries count)."""
    return _sha256(json.dumps(sources, ensure_ascii=False))


def teacher_identity(path: str) -> tuple[str, str]:
    """(the teacher's absolute path, which checkpoint of it): a workdir's latest step, or for a Hugging
    Face directory the sha256 of its file names and sizes. Read from disk, nothing loaded."""
    from transformer_jax.checkpoint import committed_steps

    where = os.path.abspath(path)
    if checkpoint_source.is_workdir(path):
        return where, f"step {max(committed_steps(os.path.join(path, 'checkpoints')))}"
    files = sorted((name, os.path.getsize(os.path.join(path, name))) for name in os.listdir(path)
                   if os.path.isfile(os.path.join(path, name)))
    return where, f"files {_sha256(json.dumps(files))[:16]}"


def wanted_manifest(config, split: str, sources: list[str], target_feature: str, beam: BeamSettings,
                    teacher: tuple[str, str]) -> dict:
    """What the cache of this run must say (MATCH_KEYS), before anything is generated."""
    return {"teacher": teacher[0], "teacher_checkpoint": teacher[1], "beam_size": beam.beam_size,
            "length_penalty": beam.length_penalty, "max_len": beam.max_len, "src_len": beam.src_len,
            "dataset": config.data.get("train_files", "") if config.get("task", "") else config.data.dataset,
            "split": split, "examples": len(sources),
            "source_sha256": source_fingerprint(sources), "target_feature": target_feature}


def differences(saved: dict, wanted: dict) -> list[tuple[str, object, object]]:
    """(key, cached value, this run's value) for every MATCH_KEYS entry that differs."""
    return [(k, saved.get(k), wanted.get(k)) for k in MATCH_KEYS if saved.get(k) != wanted.get(k)]


# ----------------------------------------------------------------------------------------------
# The cache on disk


def cache_dir(workdir: str) -> str:
    return os.path.join(workdir, DIRNAME)


def write_cache(workdir: str, manifest: dict, targets: list[str]) -> None:
    """targets.jsonl, then manifest.json (with the targets' sha256): each atomically, the manifest last."""
    directory = cache_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    text = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in targets)
    write_text_atomic(os.path.join(directory, TARGETS), text)
    write_text_atomic(os.path.join(directory, MANIFEST),
                  json.dumps({**manifest, "targets_sha256": _sha256(text)}, indent=2, ensure_ascii=False))


def read_cache(workdir: str) -> tuple[dict, list[str] | None] | None:
    """(manifest, targets) of a workdir's cache; targets None when they do not match the manifest's
    hash or count (a damaged file); None when there is no complete cache (no manifest)."""
    directory = cache_dir(workdir)
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}, None
    try:
        with open(os.path.join(directory, TARGETS), encoding="utf-8") as f:
            text = f.read()
        targets = [json.loads(line) for line in text.splitlines()]
    except (OSError, ValueError):
        return manifest, None
    if _sha256(text) != manifest.get("targets_sha256") or len(targets) != manifest.get("examples"):
        return manifest, None
    return manifest, targets


# ----------------------------------------------------------------------------------------------
# Generation and the training records


def teacher_translations(config, task, mesh, tokenizer, student_model, records: list[dict],
                         beam: BeamSettings, log=print) -> tuple[list[str], str]:
    """(the teacher's beam-search output for each record's source, the teacher's description)."""
    from types import SimpleNamespace

    from transformer_jax.tasks.predictor import Predictor
    from transformer_jax.tasks.seq2seq import translate
    from transformer_jax.train.distill import _teacher_model_and_params

    example = task.batch_shapes(config.batch_size, config.data.max_src_len, config.data.max_tgt_len)
    model, params, _, where = _teacher_model_and_params(config.distill.teacher, mesh, task, example, student_model)
    if isinstance(task, tasks.Translation) and model.cfg.max_len < beam.max_len:
        raise ValueError(f"config.distill.teacher={config.distill.teacher!r} has max_len={model.cfg.max_len}, but "
                         f"its translations must reach config.data.max_tgt_len={beam.max_len} tokens; lower "
                         "config.data.max_tgt_len or use a teacher with more positions")
    log(f"distill: sequence-level targets: translating {len(records):,} sources with the teacher ({where}), "
        f"beam {beam.beam_size}, length penalty {beam.length_penalty}, up to {beam.max_len} tokens")
    p = Predictor(model, params, tokenizer, mesh)
    if isinstance(task, Seq2Seq):  # the checkpoint's start, EOS and pad ids; `prefix` before each source
        return task.generate(p, records, SimpleNamespace(beam_size=beam.beam_size, batch_size=beam.batch_size)), where
    sources = [_text(r[task.source]) for r in records]
    outputs = translate(p, sources, beam_size=beam.beam_size, max_len=beam.max_len,
                        length_penalty=beam.length_penalty, batch_size=beam.batch_size, src_len=beam.src_len)
    return outputs, where


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def train_records(config, workdir: str, split: str, task, mesh, tokenizer, student_model, *, resuming: bool,
                  log=print) -> list[dict]:
    """The train split's records with the teacher's translations as targets: from the workdir's cache
    when its manifest matches this run, else generated now and cached (see the module docstring for
    a mismatch). Every process generates (the beam search is one sharded program); process 0 writes."""
    from transformer_jax.train.build import split_records

    records = split_records(config, split, task)
    source_key, target_key = features(task)
    prefix = getattr(task, "prefix", "")  # what the teacher reads (T5's "summarize: ")
    sources = [prefix + _text(r[source_key]) for r in records]
    teacher = teacher_identity(config.distill.teacher)
    beam = settings(config, task)
    wanted = wanted_manifest(config, split, sources, target_key, beam, teacher)
    cached = read_cache(workdir)
    where = os.path.join(cache_dir(workdir), MANIFEST)
    if cached is not None:
        saved, targets = cached
        diff = differences(saved, wanted)
        if targets is not None and not diff:
            log(f"distill: sequence-level targets from the cache {cache_dir(workdir)} ({len(targets):,} "
                f"translations by the teacher's {saved['teacher_checkpoint']})")
            return [{**r, target_key: t} for r, t in zip(records, targets)]
        what = ("; ".join(f"{k}: cached {a!r}, this run {b!r}" for k, a, b in diff) if targets is not None else
                f"{TARGETS} does not match the manifest's sha256 and count: damaged")
        if resuming:
            raise ValueError(f"config.distill.sequence_level: the cached teacher outputs ({where}) do not fit "
                             f"this run ({what}), and this workdir's checkpoints were trained on them; resume with "
                             "the settings of the cache, or start a new workdir")
        log(f"distill: the sequence-level cache does not fit this run ({what}); no checkpoint yet: regenerating")
    t0 = time.time()
    targets, _ = teacher_translations(config, task, mesh, tokenizer, student_model, records, beam, log)
    seconds = time.time() - t0
    if jax.process_index() == 0:
        write_cache(workdir, {**wanted, "seconds": seconds, "batch_size": beam.batch_size,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, targets)
    log(f"distill: {len(targets):,} teacher translations in {seconds:.1f} s, cached in {cache_dir(workdir)}")
    return [{**r, target_key: t} for r, t in zip(records, targets)]
