"""tfds sources read without TensorFlow: prepare the built-in datasets, open ArrayRecord files,
and say how to prepare anything that is missing (never download)."""

from __future__ import annotations

import importlib
import os
import re

import tensorflow_datasets as tfds

from transformer_jax.data import corpus, default_task, images, listops, retrieval  # noqa: F401  (registers the builders)

# Prepared locally on first use.
BUILT_IN = ("tjax_numbers", "tjax_listops", "tjax_text", "tjax_digits", "tjax_retrieval")
DEFAULT_TASK = "tjax_numbers"


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset is not in ``data_dir`` as ArrayRecord files."""


def base_name(dataset: str) -> str:
    """'tjax_listops/small:1.0.0' -> 'tjax_listops'."""
    return dataset.split("/")[0].split(":")[0]


def _register(task: str) -> None:
    """tfds registers WMT builders only when their module is imported."""
    base = base_name(task)
    m = re.fullmatch(r"wmt(\d+)_translate", base)
    if m:
        try:
            importlib.import_module(f"tensorflow_datasets.translate.wmt{m.group(1)}")
        except ImportError:  # a read-only builder from the files still works
            pass


def prepare(task: str = DEFAULT_TASK, *, data_dir: str | os.PathLike | None = None) -> None:
    """Generates a built-in dataset (`BUILT_IN`) as ArrayRecord files.

    Idempotent: tfds skips datasets already prepared in ``data_dir``. In a
    multi-process job, call it on process 0 before a barrier; concurrent calls
    are tolerated but do the work several times.
    """
    if base_name(task) not in BUILT_IN:
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
    if base_name(task) in BUILT_IN:
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


