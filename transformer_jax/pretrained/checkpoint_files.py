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


# What a saved model directory may hold besides its weights and config.json: removed by a save that
# does not rewrite them, so files of the directory's previous model never pass for the new one's.
GENERATION = "generation_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "source.spm", "target.spm")


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a missing file, bad bytes, bad JSON or another JSON value is named."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; a Hugging Face model directory needs it") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                         "JSON files must be UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object {{...}}, not a {type(obj).__name__}")
    return obj


def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, from the index or the single file."""
    if not directory.is_dir():
        raise FileNotFoundError(f"pretrained model directory {directory} does not exist or is not a directory")
    if (directory / INDEX).exists() and (directory / SINGLE).exists():
        raise ValueError(f"{directory} holds both {SINGLE} and {INDEX} (two weight layouts, maybe of two "
                         f"models, e.g. an interrupted save); remove the one that is not this config's model, "
                         "or save the model there again")
    if (directory / INDEX).exists():
        weight_map = read_json(directory / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{directory / INDEX} has no 'weight_map' of tensor name -> file")
        if not all(isinstance(f, str) for f in weight_map.values()):
            raise ValueError(f"{directory / INDEX}: 'weight_map' values must be shard file names")
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
        self._dtypes: dict[str, str] = {}  # safetensors' names: F32, BF16, I64, BOOL, ...
        found: dict[str, Path] = {}  # tensor -> the file that really holds it
        for file in sorted(set(self.files.values())):
            with _open(file) as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    self._shapes[name] = tuple(piece.get_shape())
                    self._dtypes[name] = str(piece.get_dtype())
                    found[name] = file
        index = next(iter(self.files.values())).parent / INDEX if self.files else Path(INDEX)
        absent = sorted(set(self.files) - set(self._shapes))
        if absent:
            raise ValueError(f"{index}: tensors listed in the index are absent from every shard: "
                             f"{', '.join(absent[:10])}")
        unlisted = sorted(set(found) - set(self.files))
        if unlisted:
            raise ValueError(f"{index} omits tensor(s) its shards hold: "
                             + ", ".join(f"{n} (in {found[n].name})" for n in unlisted[:10]))
        moved = sorted(n for n in self.files if found[n] != self.files[n])
        if moved:
            raise ValueError(f"{index} maps tensor(s) to the wrong shard: "
                             + ", ".join(f"{n} -> {self.files[n].name}, but it is in {found[n].name}"
                                         for n in moved[:10]))

    def names(self) -> set[str]:
        return set(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def dtype(self, name: str) -> str:
        return self._dtypes[name]

    def read(self, name: str, dtype=np.float32) -> np.ndarray:
        with _open(self.files[name]) as f:
            try:
                return np.asarray(f.get_tensor(name), dtype=dtype)
            except SafetensorError as e:
                raise ValueError(f"{self.files[name]}: cannot read tensor {name!r} (truncated?): {e}") from None


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def stale_files(directory: Path, keep: set[str]) -> list[Path]:
    """The model files in `directory` that a save writing only `keep` would leave from an older model:
    other weight layouts (the index first: removing it is what switches the layout), shards,
    generation config, tokenizer files, and temporary files of an interrupted save."""
    if not directory.is_dir():
        return []
    names = [INDEX] + sorted(p.name for p in directory.iterdir()
                             if (p.name.startswith("model") and ".safetensors" in p.name and p.name != INDEX)
                             or p.name in (GENERATION, *TOKENIZER_FILES))
    return [directory / n for n in names if n not in keep and (directory / n).exists()]


def remove_stale(directory: Path, keep: set[str]) -> None:
    """Remove what `stale_files` lists. Called after the new files are in place: a crash before it
    ends leaves both weight layouts, which `weight_files` refuses by name; nothing old is picked."""
    for path in stale_files(directory, keep):
        _unlink(path)


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
