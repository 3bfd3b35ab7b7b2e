"""Input pipelines: tfds ArrayRecord sources -> Grain -> fixed-shape NumPy batches of a task.

No TensorFlow: records come from ``tfds.data_source`` (random access into
ArrayRecord files) and every transformation is a Grain ``MapDataset`` /
``IterDataset`` step, so the iterator's position is a small JSON dict that the
trainer stores in its checkpoint.

    source[shard_index::shard_count] -> shuffle(seed) -> repeat -> featurize (the layout's)
      -> corrupt (the layout's seeded per-example transform, e.g. BERT masking) -> drop filtered
      -> pack (first fit) or pad (the layout's rows) -> batch

The batch layout is the caller's (a ``Layout``: transformer_jax/tasks/ passes its tasks, which this
package never imports). With ``repeat=False`` the last
batch is filled up with all-padding rows (segment ids all 0, label 0), so every batch has the
same shape; mask such rows by ``segment_ids.any(-1)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from transformer_jax.data.sources import DEFAULT_TASK, open_source
from transformer_jax.data.stats import DataStats
from transformer_jax.data.tokenizers import UNK_ID, Tokenizer, as_text, make_tokenizer

log = logging.getLogger(__name__)

TOO_LONG_MODES = ("truncate", "filter")


class Layout(Protocol):
    """What the pipeline needs to know of a batch (transformer_jax/tasks/ implements it): how a
    record becomes arrays, how those are padded into a row or packed, and a seeded augmentation."""

    name: str
    packable: bool
    augment_eval: bool
    fans_out: bool  # featurize returns a list of examples per record

    def featurize(self, record, fz: "Featurizer") -> dict | list[dict] | None: ...
    def pad(self, ex: dict, src_len: int, tgt_len: int) -> dict: ...
    def pack_lengths(self, src_len: int, tgt_len: int) -> dict[str, int]: ...
    def unpack_names(self) -> dict[str, str]: ...
    def augment(self, tokenizer): ...


# ----------------------------------------------------------------------------
# Example -> token arrays


@dataclasses.dataclass(frozen=True)
class Featurizer:
    """Record -> the layout's dict of arrays (1-D int32 tokens; uint8 pixels for images), or None when
    dropped. Picklable.

    The layout says which features become which arrays; this holds what it needs to do that (the
    tokenizer, the lengths S and T, the too-long policy) and counts what happened in ``stats``.
    """

    layout: Layout
    tokenizer: Tokenizer
    max_src_len: int
    max_tgt_len: int
    too_long: str
    stats: DataStats

    def text(self, record, key) -> str:
        text = as_text(record[key], self.stats)
        if not text:
            self.stats.add(empty=1)
        return text

    def ids(self, text: str, room: int) -> list[int] | None:
        """The tokens of ``text`` within ``room``: cut, or None (dropped), per ``too_long``."""
        ids = self.tokenizer.encode(text)
        if n := ids.count(UNK_ID):
            self.stats.add(unknown_tokens=n)
        if len(ids) <= room:
            return ids
        if self.too_long == "filter":
            self.stats.add(filtered_too_long=1)
            return None
        self.stats.add(truncated=1)
        return ids[:room]

    def __call__(self, record) -> dict[str, np.ndarray] | None:
        self.stats.add(examples=1)
        return self.layout.featurize(record, self)


class _Examples(grain.experimental.FlatMapTransform):
    """A record's list of examples, one after the other."""

    max_fan_out = 1 << 16

    def flat_map(self, examples):
        return examples


@dataclasses.dataclass(frozen=True)
class _Pad:
    """One example per row: the layout's unpacked rows."""

    layout: Layout
    src_len: int
    tgt_len: int

    def __call__(self, ex):
        return self.layout.pad(ex, self.src_len, self.tgt_len)


@dataclasses.dataclass(frozen=True)
class _Rename:
    """Grain's packer names segment ids ``<key>_segment_ids``; map to the layout's names."""

    names: tuple[tuple[str, str], ...]

    def __call__(self, ex):
        return {new: ex[old] for old, new in self.names}

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
    also record what the state belongs to (dataset, split, seed, sharding, batch
    layout), so restoring into a differently configured pipeline fails loudly
    instead of silently reading other examples.
    """

    def __init__(self, dataset: grain.IterDataset, identity: dict[str, Any], stats: DataStats, layout: Layout):
        self._iterator = iter(dataset)
        self._identity = identity
        self.stats = stats
        self.layout = layout

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
    dataset: str,
    split: str,
    *,
    layout: Layout,
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
    too_long: str = "truncate",
    num_threads: int = 2,
    source: Any = None,
) -> BatchIterator:
    """Fixed-shape NumPy batches in ``layout`` of ``dataset``/``split`` for one process.

    Args:
      dataset: tfds name, with config if any ("tjax_numbers", "tjax_listops/small",
        "wmt14_translate/de-en", "imdb_reviews", "lm1b", "tjax_text"); with ``source``, only a
        name recorded in the iterator state.
      split: tfds split, e.g. "train", "validation", "test[:10%]".
      layout: what to make of the records (a task of transformer_jax/tasks/: `tasks.Translation(...)`).
      tokenizer: anything with encode/decode/vocab_size (see tokenizers.py).
      batch_size: rows per batch yielded by this process.
      max_src_len: S, the source length (classification, masked LM: the input length).
      max_tgt_len: T, the target length (causal LM: the sequence length).
      pack: several examples per row (first fit, Grain's FirstFitPackIterDataset);
        not available for classification, which has one label per row.
      seed: shuffling (and bin-shuffling) seed, and the seed of the task's per-example
        corruption (masked LM); same seed, same order, same masks.
      shard_index, shard_count: this process's share of the examples
        (``jax.process_index()``, ``jax.process_count()``): records
        shard_index, shard_index + shard_count, ...
      repeat: repeat forever (training); if False, one pass and the last batch
        is topped up with all-padding rows.
      shuffle: defaults to ``repeat``.
      too_long: "truncate" or "filter" examples longer than S or T.
      num_threads: Grain reader threads.
      source: a random-access sequence of records (``len`` and ``[i]``, e.g. local files read by
        ``data/files.py``) read instead of the tfds ``dataset``.
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
    if source is None:
        source = open_source(dataset, split, data_dir=data_dir)
    if pack and not layout.packable:
        raise ValueError(f"pack=True with {layout.name} task {dataset!r}: one label per row; use pack=False")
    stats = DataStats()

    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(Featurizer(layout, tokenizer, max_src_len, max_tgt_len, too_long, stats))
    corrupt = layout.augment(tokenizer) if repeat or layout.augment_eval else None  # image shifts: training only
    if corrupt is not None:  # seeded by (seed, index): the same masks after a resume
        ds = ds.random_map(corrupt, seed=seed)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * batch_size)
    )  # filtered (None) examples are dropped here
    if layout.fans_out:  # a list of examples per record (QA windows), resumable mid-list
        it = grain.experimental.FlatMapIterDataset(it, _Examples())
    if pack:
        it = grain.experimental.FirstFitPackIterDataset(
            it, length_struct=layout.pack_lengths(max_src_len, max_tgt_len), num_packing_bins=batch_size, seed=seed
        ).map(_Rename(tuple(layout.unpack_names().items())))
    else:
        it = it.map(_Pad(layout, max_src_len, max_tgt_len))
    it = it.batch(batch_size, drop_remainder=repeat)
    if not repeat:
        it = it.map(_FillBatch(batch_size))
    identity = {
        "task": dataset,  # the dataset's name (kept under this key: saved iterator states carry it)
        "split": split,
        "seed": seed,
        "shard_index": shard_index,
        "shard_count": shard_count,
        "batch_size": batch_size,
        "pack": pack,
        "max_src_len": max_src_len,
        "max_tgt_len": max_tgt_len,
    }
    if corrupt is not None:
        identity["corrupt"] = repr(corrupt)
    return BatchIterator(it, identity, stats, layout)


def length_sorted(batches: Iterable[dict[str, np.ndarray]], keys: Sequence[str], *, window: int = 16,
                  multiple: int = 128) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches regrouped by length: rows of every `window` consecutive batches are sorted
    by their length (non-zero entries of ``keys[0]``, e.g. segment ids), re-cut into as many batches,
    and each batch's ``keys`` are trimmed to its longest row rounded up to `multiple`.

    The same rows, so the same sums (loss, accuracy); far less padding to compute over when lengths
    vary (ListOps: 500-2000 tokens padded to 2048; quadratic attention gains most). Sorting within a
    window, not the whole split, keeps the first k batches the first k·B rows of the split (an eval
    capped at `eval_batches` sees the same examples). Only for models whose outputs do not depend on
    trailing padding (`TransformerConfig.length_invariant`) and one process (each process would trim
    its own shard differently). Shapes vary: a jitted step compiles once per trimmed length.
    """
    batches = iter(batches)
    while True:
        group = list(itertools.islice(batches, window))
        if not group:
            return
        rows = {k: np.concatenate([b[k] for b in group]) for k in group[0]}
        order = np.argsort((rows[keys[0]] != 0).sum(axis=1), kind="stable")
        size = len(group[0][keys[0]])
        for start in range(0, len(order), size):
            take = order[start:start + size]
            batch = {k: v[take] for k, v in rows.items()}
            longest = int((batch[keys[0]] != 0).sum(axis=1).max(initial=0))
            width = min(max(-(-longest // multiple), 1) * multiple, batch[keys[0]].shape[1])
            yield {k: (v[:, :width] if k in keys else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------
# Text access for evaluation and tokenizer training


def dataset_records(dataset: str, split: str, *, data_dir: str | os.PathLike | None = None,
            max_examples: int | None = None) -> Iterator[dict]:
    """The first `max_examples` (all if None) records of a tfds split, in the stored order."""
    source = open_source(dataset, split, data_dir=data_dir)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    return (source[i] for i in range(n))


def eval_pairs(
    dataset: str,
    split: str,
    keys: Sequence[str] = ("source", "target"),
    *,
    data_dir: str | os.PathLike | None = None,
    max_examples: int | None = None,
    stats: DataStats | None = None,
) -> Iterator[tuple[str, str]]:
    """(source_text, reference_text) of a split, from the features `keys`, in the stored order."""
    source, target = keys
    for r in dataset_records(dataset, split, data_dir=data_dir, max_examples=max_examples):
        yield as_text(r[source], stats), as_text(r[target], stats)


def text_features(dataset: str, *, data_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The names of a tfds dataset's text features, in their stored order."""
    import tensorflow_datasets as tfds

    features = open_source(dataset, "train", data_dir=data_dir).dataset_info.features
    return tuple(k for k, f in features.items() if isinstance(f, tfds.features.Text))


def iter_texts(
    dataset: str,
    split: str = "train",
    keys: Sequence[str] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    max_examples: int | None = None,
) -> Iterator[str]:
    """Every text feature in `keys` (default: all, `text_features`) of each record."""
    keys = text_features(dataset, data_dir=data_dir) if keys is None else tuple(keys)
    for r in dataset_records(dataset, split, data_dir=data_dir, max_examples=max_examples):
        for k in keys:
            yield as_text(r[k])


def sentencepiece_path(workdir, dataset: str, vocab_size: int, symbols: Sequence[str] = ()) -> str:
    """Where a workdir keeps the SentencePiece model of ``dataset``: ``<dataset>.spm<vocab>[.mask].model``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset)
    tag = "".join("." + re.sub(r"[^a-z0-9]+", "", s.lower()) for s in symbols)
    return os.path.join(os.fspath(workdir), f"{name}.spm{vocab_size}{tag}.model")


def make_task_tokenizer(
    kind: str,
    task: str = DEFAULT_TASK,
    *,
    workdir: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    text_keys: Sequence[str] | None = None,
    max_train_examples: int | None = 1_000_000,
    symbols: Sequence[str] = (),
) -> Tokenizer:
    """The tokenizer for dataset ``task``; SentencePiece trains once on the features ``text_keys``
    (default: every text feature) of its train split.

    The SentencePiece model is ``<workdir>/<task>.spm<vocab_size>.model``; later
    runs with the same workdir load it instead of training. ``symbols`` are extra
    pieces a task needs (``("[MASK]",)`` for a masked LM); they name the file too
    (``...spm512.mask.model``).
    """
    if kind != "sentencepiece":
        return make_tokenizer(kind)
    if workdir is None or vocab_size is None:
        raise ValueError("make_task_tokenizer('sentencepiece', ...) needs workdir and vocab_size")
    path = sentencepiece_path(workdir, task, vocab_size, symbols)
    texts = lambda: iter_texts(task, "train", text_keys, data_dir=data_dir, max_examples=max_train_examples)
    return make_tokenizer("sentencepiece", vocab_size=vocab_size, model_path=path, texts=texts, symbols=symbols)
