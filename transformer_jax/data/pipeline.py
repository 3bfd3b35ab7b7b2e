"""Input pipelines: tfds ArrayRecord sources -> Grain -> fixed-shape NumPy batches.

No TensorFlow: records come from ``tfds.data_source`` (random access into
ArrayRecord files) and every transformation is a Grain ``MapDataset`` /
``IterDataset`` step, so the iterator's position is a small JSON dict that the
trainer stores in its checkpoint.

    source[shard_index::shard_count] -> shuffle(seed) -> repeat -> tokenize
      -> truncate / filter over-long -> pack (first fit) or pad -> batch

Batch layouts (int32, ids: 0 pad, 1 EOS, 2 BOS, 3 UNK; segment ids start at
1 in every row, 0 is padding; positions restart at 0 in every segment):

  translation     src, src_segment_ids, src_positions            [B, S]
                  tgt_in, tgt_out, tgt_segment_ids, tgt_positions [B, T]
                  (src = tokens + EOS; tgt_in = BOS + tokens; tgt_out = tokens + EOS)
  classification  inputs, segment_ids, positions [B, S]; label [B]
  lm              inputs, targets, segment_ids, positions [B, T]
                  (inputs = BOS + tokens; targets = tokens + EOS)

With ``repeat=False`` the last batch is filled up with all-padding rows
(segment ids all 0, label 0), so every batch has the same shape; mask such
rows by ``segment_ids.any(-1)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import grain
import numpy as np
import tensorflow_datasets as tfds

from transformer_jax.data import default_task, listops  # noqa: F401  (registers the builders)
from transformer_jax.data.stats import DataStats
from transformer_jax.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    UNK_ID,
    Tokenizer,
    as_text,
    make_tokenizer,
)

log = logging.getLogger(__name__)

Kind = Literal["translation", "classification", "lm"]
BUILT_IN = ("tjax_numbers", "tjax_listops")  # prepared locally on first use
DEFAULT_TASK = "tjax_numbers"
TOO_LONG_MODES = ("truncate", "filter")


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset is not in ``data_dir`` as ArrayRecord files."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a tfds dataset's features mean.

    keys: translation (source, target); classification (text, label); lm (text,).
    """

    kind: Kind
    keys: tuple[str, ...]

    def __post_init__(self):
        want = {"translation": 2, "classification": 2, "lm": 1}
        if self.kind not in want:
            raise ValueError(f"TaskSpec.kind={self.kind!r}; valid: {tuple(want)}")
        if len(self.keys) != want[self.kind]:
            raise ValueError(
                f"TaskSpec.keys={self.keys!r} for kind {self.kind!r}; needs {want[self.kind]} key(s)"
            )


_KNOWN_TASKS = {
    "tjax_numbers": TaskSpec("translation", ("source", "target")),
    "tjax_listops": TaskSpec("classification", ("text", "label")),
    "imdb_reviews": TaskSpec("classification", ("text", "label")),
    "lm1b": TaskSpec("lm", ("text",)),
}


def _base_name(task: str) -> str:
    return task.split("/")[0].split(":")[0]


def task_spec(task: str, text_keys: Sequence[str] | None = None, features: Any = None) -> TaskSpec:
    """The TaskSpec of ``task``: from ``text_keys`` if given, else known names.

    Known: the built-in tasks, imdb_reviews, lm1b and wmt*_translate/xx-yy
    (source xx, target yy). With ``text_keys`` the kind is read from the
    features: one key is LM; a ClassLabel (or integer) second key is
    classification; otherwise translation.
    """
    if text_keys is not None:
        keys = tuple(text_keys)
        if len(keys) == 1:
            return TaskSpec("lm", keys)
        feature = features[keys[1]] if features is not None and keys[1] in features else None
        if isinstance(feature, tfds.features.ClassLabel) or (
            feature is not None
            and not isinstance(feature, tfds.features.Text)
            and np.issubdtype(np.dtype(feature.np_dtype), np.integer)
        ):
            return TaskSpec("classification", keys)
        return TaskSpec("translation", keys)
    base = _base_name(task)
    if base in _KNOWN_TASKS:
        return _KNOWN_TASKS[base]
    m = re.fullmatch(r"wmt\w*_translate/([a-z]+)-([a-z]+)(:.*)?", task)
    if m:
        return TaskSpec("translation", (m.group(1), m.group(2)))
    raise ValueError(
        f"task={task!r} is not known; pass text_keys, e.g. ('de', 'en') for translation, "
        f"('text', 'label') for classification or ('text',) for LM. Known: {sorted(_KNOWN_TASKS)}"
    )


# ----------------------------------------------------------------------------
# Sources


def _register(task: str) -> None:
    """tfds registers WMT builders only when their module is imported."""
    base = _base_name(task)
    m = re.fullmatch(r"wmt(\d+)_translate", base)
    if m:
        try:
            importlib.import_module(f"tensorflow_datasets.translate.wmt{m.group(1)}")
        except ImportError:  # a read-only builder from the files still works
            pass


def prepare(task: str = DEFAULT_TASK, *, data_dir: str | os.PathLike | None = None) -> None:
    """Generates a built-in dataset (tjax_numbers, tjax_listops) as ArrayRecord files.

    Idempotent: tfds skips datasets already prepared in ``data_dir``. In a
    multi-process job, call it on process 0 before a barrier; concurrent calls
    are tolerated but do the work several times.
    """
    if _base_name(task) not in BUILT_IN:
        raise ValueError(f"prepare() builds only the built-in tasks {BUILT_IN}, got task={task!r}")
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    builder = tfds.builder(task, data_dir=data_dir, file_format="array_record")
    try:
        builder.download_and_prepare(file_format="array_record")
    except OSError:
        # Several processes preparing one shared data_dir: tfds writes to a temporary
        # directory and renames it; the losers of that race find the data in place.
        if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
            raise


def _not_prepared(task: str, data_dir, why: str) -> DatasetNotPreparedError:
    where = (
        os.fspath(data_dir)
        if data_dir is not None
        else "the default tfds data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    )
    dd = f" --data_dir={os.fspath(data_dir)}" if data_dir is not None else ""
    return DatasetNotPreparedError(
        f"tfds dataset {task!r} is not prepared as ArrayRecord in {where} ({why}). "
        f"This pipeline reads without TensorFlow and never downloads; prepare it once, "
        f"on a machine with network access, with\n"
        f"  tfds build {task.split('/')[0]}"
        + (f" --config={task.split('/')[1]}" if "/" in task else "")
        + f" --file_format=array_record{dd}\n"
        f"or in Python: tfds.builder({task!r}, data_dir=...).download_and_prepare("
        f"file_format='array_record')."
    )


def open_source(task: str, split: str, *, data_dir: str | os.PathLike | None = None):
    """The random-access tfds data source of ``task``/``split``.

    Built-in tasks are prepared on first use; anything else must already be
    prepared (as ArrayRecord) in ``data_dir``, else DatasetNotPreparedError.
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    if _base_name(task) in BUILT_IN:
        prepare(task, data_dir=data_dir)
    _register(task)
    try:
        return tfds.data_source(task, split=split, data_dir=data_dir, download=False)
    except (
        tfds.core.registered.DatasetNotFoundError,
        AssertionError,
        FileNotFoundError,
        NotImplementedError,
    ) as e:
        raise _not_prepared(task, data_dir, _why_not_prepared(task, data_dir)) from e


def _why_not_prepared(task: str, data_dir) -> str:
    try:
        builder = tfds.builder(task, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        return "unknown to tfds and no prepared files found"
    if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        return f"nothing at {builder.data_dir}"
    fmt = builder.info.file_format
    return f"found at {builder.data_dir} as {getattr(fmt, 'value', fmt)}, not array_record"


# ----------------------------------------------------------------------------
# Example -> token arrays


def _i32(ids: Sequence[int]) -> np.ndarray:
    return np.asarray(ids, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class _Featurizer:
    """Record -> dict of 1-D int32 arrays, or None when filtered. Picklable."""

    spec: TaskSpec
    tokenizer: Tokenizer
    max_src_len: int
    max_tgt_len: int
    too_long: str
    stats: DataStats

    def _text(self, record, key) -> str:
        text = as_text(record[key], self.stats)
        if not text:
            self.stats.add(empty=1)
        return text

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if n := ids.count(UNK_ID):
            self.stats.add(unknown_tokens=n)
        return ids

    def _fit(self, ids: list[int], room: int) -> list[int] | None:
        """``ids`` within ``room`` tokens: cut, or None (dropped), per ``too_long``."""
        if len(ids) <= room:
            return ids
        if self.too_long == "filter":
            return None
        self.stats.add(truncated=1)
        return ids[:room]

    def __call__(self, record) -> dict[str, np.ndarray] | None:
        self.stats.add(examples=1)
        kind, keys = self.spec.kind, self.spec.keys
        if kind == "translation":
            src = self._fit(self._encode(self._text(record, keys[0])), self.max_src_len - 1)
            tgt = self._fit(self._encode(self._text(record, keys[1])), self.max_tgt_len - 1)
            out = (
                None
                if src is None or tgt is None
                else {
                    "src": _i32(src + [EOS_ID]),
                    "tgt_in": _i32([BOS_ID] + tgt),
                    "tgt_out": _i32(tgt + [EOS_ID]),
                }
            )
        elif kind == "classification":
            text = self._text(record, keys[0])
            if not text:  # nothing to attend to: drop rather than feed an empty row
                return None
            ids = self._fit(self._encode(text), self.max_src_len)
            out = None if ids is None else {"inputs": _i32(ids), "label": np.int32(record[keys[1]])}
        else:
            ids = self._fit(self._encode(self._text(record, keys[0])), self.max_tgt_len - 1)
            out = None if ids is None else {"inputs": _i32([BOS_ID] + ids), "targets": _i32(ids + [EOS_ID])}
        if out is None:
            self.stats.add(filtered_too_long=1)
        return out


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
    return np.pad(x, (0, n - len(x)))


def _one_segment(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    length = len(x)
    seg = _pad_to(np.ones(length, np.int32), n)
    pos = _pad_to(np.arange(length, dtype=np.int32), n)
    return _pad_to(x, n), seg, pos


@dataclasses.dataclass(frozen=True)
class _Pad:
    """One example per row: the unpacked layout."""

    kind: Kind
    src_len: int
    tgt_len: int

    def __call__(self, ex):
        if self.kind == "translation":
            src, src_seg, src_pos = _one_segment(ex["src"], self.src_len)
            tgt_in, tgt_seg, tgt_pos = _one_segment(ex["tgt_in"], self.tgt_len)
            return {
                "src": src,
                "src_segment_ids": src_seg,
                "src_positions": src_pos,
                "tgt_in": tgt_in,
                "tgt_out": _pad_to(ex["tgt_out"], self.tgt_len),
                "tgt_segment_ids": tgt_seg,
                "tgt_positions": tgt_pos,
            }
        if self.kind == "classification":
            inputs, seg, pos = _one_segment(ex["inputs"], self.src_len)
            return {"inputs": inputs, "segment_ids": seg, "positions": pos, "label": ex["label"]}
        inputs, seg, pos = _one_segment(ex["inputs"], self.tgt_len)
        return {
            "inputs": inputs,
            "targets": _pad_to(ex["targets"], self.tgt_len),
            "segment_ids": seg,
            "positions": pos,
        }


def _rename_packed(kind: Kind) -> Callable[[dict], dict]:
    """Grain's packer names segment ids ``<key>_segment_ids``; map to ours."""
    if kind == "translation":
        names = {
            "src": "src",
            "src_segment_ids": "src_segment_ids",
            "src_positions": "src_positions",
            "tgt_in": "tgt_in",
            "tgt_out": "tgt_out",
            "tgt_in_segment_ids": "tgt_segment_ids",
            "tgt_in_positions": "tgt_positions",
        }
    else:
        names = {
            "inputs": "inputs",
            "targets": "targets",
            "inputs_segment_ids": "segment_ids",
            "inputs_positions": "positions",
        }
    return lambda ex: {new: ex[old] for old, new in names.items()}


@dataclasses.dataclass(frozen=True)
class _FillBatch:
    """Tops a short final batch up with all-padding rows (fixed shapes)."""

    batch_size: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = next(iter(batch.values())).shape[0]
        if n == self.batch_size:
            return batch
        return {
            k: np.concatenate([v, np.zeros((self.batch_size - n, *v.shape[1:]), v.dtype)])
            for k, v in batch.items()
        }


# ----------------------------------------------------------------------------
# The iterator


class BatchIterator:
    """Iterator of batch dicts with a JSON-serialisable, restorable position.

    ``get_state()`` / ``set_state()`` wrap Grain's DatasetIterator state and
    also record what the state belongs to (task, split, seed, sharding, batch
    layout), so restoring into a differently configured pipeline fails loudly
    instead of silently reading other examples.
    """

    def __init__(
        self, dataset: grain.IterDataset, identity: dict[str, Any], stats: DataStats, spec: TaskSpec
    ):
        self._iterator = iter(dataset)
        self._identity = identity
        self.stats = stats
        self.spec = spec

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        state = {"pipeline": dict(self._identity), "grain": self._iterator.get_state()}
        return json.loads(json.dumps(state, default=_json_default))

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("pipeline", {})
        for field, value in self._identity.items():
            if saved.get(field) != value:
                raise ValueError(
                    f"iterator state was saved with {field}={saved.get(field)!r} but this pipeline "
                    f"has {field}={value!r}; restore into an identically configured pipeline"
                )
        self._iterator.set_state(state["grain"])


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.decode("latin-1")
    raise TypeError(f"iterator state holds a {type(x).__name__}, which is not JSON-serialisable")


def make_iterator(
    task: str,
    split: str,
    *,
    tokenizer: Tokenizer,
    batch_size: int,
    max_src_len: int,
    max_tgt_len: int,
    pack: bool,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    repeat: bool = True,
    shuffle: bool | None = None,
    data_dir: str | os.PathLike | None = None,
    text_keys: Sequence[str] | None = None,
    too_long: str = "truncate",
    num_threads: int = 2,
) -> BatchIterator:
    """Fixed-shape NumPy batches of ``task``/``split`` for one process.

    Args:
      task: tfds name, with config if any ("tjax_numbers", "tjax_listops/small",
        "wmt14_translate/de-en", "imdb_reviews", "lm1b").
      split: tfds split, e.g. "train", "validation", "test[:10%]".
      tokenizer: anything with encode/decode/vocab_size (see tokenizers.py).
      batch_size: rows per batch yielded by this process.
      max_src_len: S, the source length (classification: the input length).
      max_tgt_len: T, the target length (LM: the sequence length).
      pack: several examples per row (first fit, Grain's FirstFitPackIterDataset);
        not available for classification, which has one label per row.
      seed: shuffling (and bin-shuffling) seed; same seed, same order.
      shard_index, shard_count: this process's share of the examples
        (``jax.process_index()``, ``jax.process_count()``): records
        shard_index, shard_index + shard_count, ...
      repeat: repeat forever (training); if False, one pass and the last batch
        is topped up with all-padding rows.
      shuffle: defaults to ``repeat``.
      too_long: "truncate" or "filter" examples longer than S or T.
      num_threads: Grain reader threads.
    """
    if too_long not in TOO_LONG_MODES:
        raise ValueError(f"too_long={too_long!r}; valid: {TOO_LONG_MODES}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    if batch_size < 1 or max_src_len < 2 or max_tgt_len < 2:
        raise ValueError(
            f"batch_size={batch_size}, max_src_len={max_src_len}, max_tgt_len={max_tgt_len}: "
            "need batch_size >= 1 and lengths >= 2"
        )
    shuffle = repeat if shuffle is None else shuffle
    source = open_source(task, split, data_dir=data_dir)
    spec = task_spec(task, text_keys, source.dataset_info.features)
    if pack and spec.kind == "classification":
        raise ValueError(f"pack=True with classification task {task!r}: one label per row; use pack=False")
    stats = DataStats()

    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(_Featurizer(spec, tokenizer, max_src_len, max_tgt_len, too_long, stats))
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size)
    )  # filtered (None) examples are dropped here
    if pack:
        lengths = (
            {"src": max_src_len, "tgt_in": max_tgt_len, "tgt_out": max_tgt_len}
            if spec.kind == "translation"
            else {"inputs": max_tgt_len, "targets": max_tgt_len}
        )
        it = grain.experimental.FirstFitPackIterDataset(
            it, length_struct=lengths, num_packing_bins=batch_size, seed=seed
        ).map(_rename_packed(spec.kind))
    else:
        it = it.map(_Pad(spec.kind, max_src_len, max_tgt_len))
    it = it.batch(batch_size, drop_remainder=repeat)
    if not repeat:
        it = it.map(_FillBatch(batch_size))
    identity = {
        "task": task,
        "split": split,
        "seed": seed,
        "shard_index": shard_index,
        "shard_count": shard_count,
        "batch_size": batch_size,
        "pack": pack,
        "max_src_len": max_src_len,
        "max_tgt_len": max_tgt_len,
    }
    return BatchIterator(it, identity, stats, spec)


# ----------------------------------------------------------------------------
# Text access for evaluation and tokenizer training


def _records(task, split, data_dir, text_keys, max_examples):
    source = open_source(task, split, data_dir=data_dir)
    spec = task_spec(task, text_keys, source.dataset_info.features)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    return spec, (source[i] for i in range(n))


def eval_pairs(
    task: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    text_keys: Sequence[str] | None = None,
    max_examples: int | None = None,
    stats: DataStats | None = None,
) -> Iterator[tuple[str, str]]:
    """(source_text, reference_text) of a translation split, in the stored order."""
    spec, records = _records(task, split, data_dir, text_keys, max_examples)
    if spec.kind != "translation":
        raise ValueError(f"eval_pairs needs a translation task; {task!r} is {spec.kind}")
    for r in records:
        yield as_text(r[spec.keys[0]], stats), as_text(r[spec.keys[1]], stats)


def iter_texts(
    task: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    text_keys: Sequence[str] | None = None,
    max_examples: int | None = None,
) -> Iterator[str]:
    """Every text field of each record (source and target for translation)."""
    spec, records = _records(task, split, data_dir, text_keys, max_examples)
    text_keys = spec.keys[:1] if spec.kind == "classification" else spec.keys
    for r in records:
        for k in text_keys:
            yield as_text(r[k])


def make_task_tokenizer(
    kind: str,
    task: str = DEFAULT_TASK,
    *,
    workdir: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    text_keys: Sequence[str] | None = None,
    max_train_examples: int | None = 1_000_000,
) -> Tokenizer:
    """The tokenizer for ``task``; SentencePiece trains on its train split once.

    The SentencePiece model is ``<workdir>/<task>.spm<vocab_size>.model``; later
    runs with the same workdir load it instead of training.
    """
    if kind != "sentencepiece":
        return make_tokenizer(kind)
    if workdir is None or vocab_size is None:
        raise ValueError("make_task_tokenizer('sentencepiece', ...) needs workdir and vocab_size")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
    path = os.path.join(os.fspath(workdir), f"{name}.spm{vocab_size}.model")
    texts = lambda: iter_texts(
        task, "train", data_dir=data_dir, text_keys=text_keys, max_examples=max_train_examples
    )
    return make_tokenizer("sentencepiece", vocab_size=vocab_size, model_path=path, texts=texts)
