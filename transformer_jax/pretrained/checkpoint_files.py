"""The files of a Hugging Face model directory: finding them, reading tensors lazily, writing.

Reading goes through `safetensors.safe_open`, which maps the file and reads one tensor at a time
(and reports a truncated file); writing writes each file beside its final name and renames it
into place, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TORCH_ONLY = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "tf_model.h5", "flax_model.msgpack")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; a Hugging Face model directory needs it") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, from the index or the single file."""
    if not directory.is_dir():
        raise FileNotFoundError(f"pretrained model directory {directory} does not exist or is not a directory")
    if (directory / INDEX).exists():
        weight_map = read_json(directory / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{directory / INDEX} has no 'weight_map' of tensor name -> file")
        files = {name: directory / file for name, file in weight_map.items()}
        missing = sorted({str(f) for f in files.values() if not f.exists()})
        if missing:
            raise FileNotFoundError(f"{directory / INDEX} lists shard file(s) that do not exist: {', '.join(missing)}")
        return files
    if (directory / SINGLE).exists():
        return {name: directory / SINGLE for name in _names(directory / SINGLE)}
    others = [name for name in TORCH_ONLY if (directory / name).exists()]
    if others:
        raise FileNotFoundError(
            f"{directory} has {', '.join(others)} but no {SINGLE}: transformer_jax reads safetensors only "
            "(it never unpickles). Convert once with transformers: "
            "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`, "
            "or the safetensors 'convert' space")
    raise FileNotFoundError(f"{directory} has neither {SINGLE} nor {INDEX}")


def _names(file: Path) -> list[str]:
    with _open(file) as f:
        return list(f.keys())


@contextlib.contextmanager
def _open(file: Path):
    try:
        with safe_open(str(file), framework="numpy") as f:
            yield f
    except SafetensorError as e:
        raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {e}") from None


class TensorReader:
    """Lazy access to the tensors of one model directory: shapes from the headers, data on demand."""

    def __init__(self, files: Mapping[str, Path]):
        self.files = dict(files)
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in sorted(set(self.files.values())):
            with _open(file) as f:
                for name in f.keys():
                    self._shapes[name] = tuple(f.get_slice(name).get_shape())
        absent = sorted(set(self.files) - set(self._shapes))
        if absent:
            raise ValueError(f"tensors listed in the index are absent from their files: {', '.join(absent[:10])}")

    def names(self) -> set[str]:
        return set(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read(self, name: str, dtype=np.float32) -> np.ndarray:
        with _open(self.files[name]) as f:
            try:
                return np.asarray(f.get_tensor(name), dtype=dtype)
            except SafetensorError as e:
                raise ValueError(f"{self.files[name]}: cannot read tensor {name!r} (truncated?): {e}") from None


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_tensors(path: Path, tensors: Iterator[tuple[str, np.ndarray]] | Mapping[str, np.ndarray]) -> None:
    """One safetensors file (metadata format "pt", so torch-based readers accept it), atomically."""
    items = dict(tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in items.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
