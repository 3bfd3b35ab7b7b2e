"""`from_pretrained` and `save_pretrained`: Hugging Face model directories <-> (model, variables).

Loading checks everything it can before reading a byte of tensor data: the files, the
architecture, every config field, the full set of tensor names and each tensor's shape (from the
safetensors headers). Then it reads one tensor at a time and places it straight into its sharding
(from the logical rules table) when a mesh is given, so each device only ever holds its shard and
the host holds at most one tensor.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.experimental import multihost_utils

from transformer_jax import sharding
from transformer_jax.config import TransformerConfig
from transformer_jax.decode import GenerationConfig
from transformer_jax.model import Transformer
from transformer_jax.pretrained.checkpoint_files import (GENERATION, SINGLE, TensorReader, read_json,
                                                         remove_stale, weight_files, write_json, write_tensors)
from transformer_jax.pretrained.families import ARCHITECTURES, FAMILIES, Family
from transformer_jax.pretrained.tensors import Tensor
from transformer_jax.scan import stack_layers, unstack_layers

# Fields that do not change what a model computes at inference, or that its class never reads.
_IRRELEVANT = {"dtype", "param_dtype", "dropout_rate", "scan_layers", "remat"}
_ROOTS = {"Encoder": "encoder", "Decoder": "decoder"}  # bare stacks: their own parameters hold the layers
_UNUSED_BY = {
    "Encoder": {"num_decoder_layers", "decoder_attention", "cross_attention", "share_embeddings", "tie_output",
                "logits_bias", "logits_scale", "num_classes", "pooling"},
    "MaskedLM": {"num_decoder_layers", "decoder_attention", "cross_attention", "share_embeddings",
                 "num_classes", "pooling"},
    "EncoderClassifier": {"num_decoder_layers", "decoder_attention", "cross_attention", "share_embeddings",
                          "tie_output", "logits_bias", "logits_scale"},
    "DecoderLM": {"num_encoder_layers", "encoder_attention", "cross_attention", "share_embeddings",
                  "num_classes", "pooling", "pad_id", "type_vocab_size"},
    "Transformer": {"num_classes", "pooling", "type_vocab_size"},
}


def _architecture(hf: dict, config_path: Path) -> tuple[str, Family]:
    archs = hf.get("architectures") or []
    supported = ", ".join(sorted(ARCHITECTURES))
    if not archs:
        raise ValueError(f"{config_path} has no 'architectures' entry; supported architectures: {supported}")
    if archs[0] not in ARCHITECTURES:
        raise ValueError(f"{config_path}: architecture {archs[0]!r} is not supported; supported: {supported}")
    return archs[0], ARCHITECTURES[archs[0]]


# config.json fields that, when set, size a table or a window: 0 or less is never a valid model (the
# reference would build an empty embedding, or a window that sees nothing), in any family.
_POSITIVE_IF_SET = ("type_vocab_size", "sliding_window")


def config_of(family: Family, hf: dict, config_path: Path) -> TransformerConfig:
    """`family.to_config(hf)`, with every failure one ValueError naming `config_path` and the field
    (a required field missing, a value of the wrong type, one out of range)."""
    for field in _POSITIVE_IF_SET:
        value = hf.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{config_path}: {field}={value!r} must be a positive integer (or null/absent)")
    try:
        return family.to_config(hf)
    except KeyError as e:
        raise ValueError(f"{config_path} lacks the required field {e.args[0]!r} (a {family.name} config.json "
                         "needs it)") from None
    except (TypeError, AttributeError) as e:
        raise ValueError(f"{config_path}: a field has a value of the wrong type for a {family.name} config "
                         f"({e})") from None
    except ValueError as e:
        raise ValueError(f"{config_path}: {str(e).removeprefix('config.json: ')}") from None


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# Overrides that leave what a checkpoint computes unchanged (up to the computation dtype).
_SAFE_OVERRIDES = _IRRELEVANT | {"max_len"}


def _dtype_name(safetensors_dtype: str) -> str:
    return {"I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}.get(
        safetensors_dtype, safetensors_dtype)


def _same_attention(a, b) -> bool:
    """Two specs (or per-layer tuples) compute the same: equal, or both exact softmax (Dense, Flash)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        n = max(len(a), len(b))
        a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
        return len(a) == len(b) and all(_same_attention(x, y) for x, y in zip(a, b))
    return a == b or (getattr(a, "exact_softmax", False) and getattr(b, "exact_softmax", False))


def _check_overrides(stored: TransformerConfig, cfg: TransformerConfig, overrides: dict, directory: Path) -> None:
    """An override may change how the model runs (dtype, dropout, scan, remat, max_len, an exact
    attention backend), never what the checkpoint computes: that would load and run, wrongly."""
    for field, value in overrides.items():
        if field in _SAFE_OVERRIDES or getattr(stored, field, value) == getattr(cfg, field, value):
            continue
        if field.endswith("_attention") and _same_attention(getattr(stored, field), getattr(cfg, field)):
            continue
        raise ValueError(f"from_pretrained({str(directory)!r}, {field}={value!r}): the override changes what the "
                         f"checkpoint computes (its config.json gives {field}={getattr(stored, field)!r}); "
                         f"overrides may set {', '.join(sorted(_SAFE_OVERRIDES))} or an exact-softmax attention "
                         "(Dense, Flash)")


def _example_inputs(model) -> tuple:
    ids = jnp.ones((1, 1), jnp.int32)
    return (ids, ids) if isinstance(model, Transformer) else (ids,)


def abstract_params(model) -> dict:
    """The model's (boxed) parameter shapes, without allocating them."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *_example_inputs(model)))["params"]


def _check_names(table: list[Tensor], stored: set[str], family: Family, directory: Path) -> dict[str, str]:
    """Row name -> the stored name to read; raises naming missing and unexpected tensors."""
    chosen, missing = {}, []
    for row in table:
        found = next((n for n in (row.name, *row.aliases) if n in stored), None)
        if found is None:
            missing.append(row.name)
        chosen[row.name] = found
    known = {n for row in table for n in (row.name, *row.aliases)}
    unexpected = sorted(n for n in stored - known if not any(re.fullmatch(p, n) for p in family.ignored))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s): {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
        if unexpected:
            parts.append(f"unexpected tensor(s): {', '.join(unexpected[:12])}{' ...' if len(unexpected) > 12 else ''}")
        raise ValueError(f"{directory}: the checkpoint does not match its config.json ({family.name}): "
                         + "; ".join(parts))
    return chosen


def _expected_shape(row: Tensor, shapes: dict) -> tuple[int, ...]:
    structs = [jax.ShapeDtypeStruct(shapes[p], jnp.float32) for p in row.paths]
    return tuple(jax.eval_shape(row.save, *structs).shape)


def from_pretrained(path, *, mesh=None, dtype: str | None = None, param_dtype: str = "float32",
                    rules=sharding.LOGICAL_RULES, **config_overrides):
    """Load a Hugging Face model directory: returns `(model, variables)`.

    `config.json`'s `architectures[0]` picks the model (see `SUPPORTED`); weights come from
    `model.safetensors` or a sharded `model.safetensors.index.json`. With `mesh`, every parameter is
    created already sharded by the logical rules. `dtype` sets the computation dtype;
    `config_overrides` replace further `TransformerConfig` fields (e.g. `max_len`, `dropout_rate`;
    `scan_layers=True` loads per layer, then stacks the layers with `stack_layers`).
    """
    directory = Path(path)
    files = weight_files(directory)  # first: a missing directory or weights file is the likeliest error
    hf = read_json(directory / "config.json")
    arch, family = _architecture(hf, directory / "config.json")
    stored_cfg = config_of(family, hf, directory / "config.json")
    overrides = dict(config_overrides, param_dtype=param_dtype)
    if dtype is not None:
        overrides["dtype"] = dtype
    cfg = stored_cfg.replace(**overrides)
    _check_overrides(stored_cfg, cfg, config_overrides, directory)
    model = family.architectures[arch](cfg.replace(scan_layers=False))  # the tables name layer_<i>

    boxed = abstract_params(model)
    shardings = flatten_dict(sharding.logical_shardings(boxed, mesh, rules)) if mesh is not None else {}
    shapes = {p: tuple(x.shape) for p, x in flatten_dict(nn.unbox(boxed)).items()}
    table = family.tensors(cfg, arch)
    covered = [p for row in table for p in row.paths]
    assert sorted(covered) == sorted(shapes), (  # a bug in a tensor table, never the user's input
        f"{family.name} table vs model: {sorted(set(covered) ^ set(shapes))}")

    reader = TensorReader(files)
    stored = _check_names(table, reader.names(), family, directory)
    for row in table:
        want, got = _expected_shape(row, shapes), reader.shape(stored[row.name])
        if want != got:
            raise ValueError(f"{directory}: tensor {stored[row.name]!r} has shape {got} in the checkpoint, "
                             f"but config.json implies {want}")
        if reader.dtype(stored[row.name]) not in _FLOAT_DTYPES:
            raise ValueError(f"{directory}: tensor {stored[row.name]!r} is {_dtype_name(reader.dtype(stored[row.name]))} "
                             f"in the checkpoint; weights must be floating point ({', '.join(_FLOAT_DTYPES)}), "
                             "not cast in silence")

    np_dtype = jnp.dtype(param_dtype)
    params = {}
    for row in table:
        raw = reader.read(stored[row.name])
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        if bad:
            raise ValueError(f"{directory}: tensor {stored[row.name]!r} holds {bad} non-finite value(s) (NaN or "
                             f"inf) of {raw.size}; the checkpoint is damaged")
        for p, value in zip(row.paths, row.load(raw)):
            value = np.asarray(value, np_dtype)
            if p in shardings:
                params[p] = jax.make_array_from_callback(value.shape, shardings[p], lambda idx, v=value: v[idx])
            else:
                params[p] = jnp.asarray(value)
    if not cfg.scan_layers:
        return model, {"params": unflatten_dict(params)}
    model = family.architectures[arch](cfg)  # scan_layers=True: stack the layers, then re-shard
    params = stack_layers(unflatten_dict(params), cfg, _ROOTS.get(type(model).__name__))
    if mesh is not None:
        params = jax.device_put(params, sharding.logical_shardings(abstract_params(model), mesh, rules))
    return model, {"params": params}


_GENERATION_KEYS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
                    "forced_bos_token_id", "forced_eos_token_id")


def load_generation_config(path) -> GenerationConfig:
    """The directory's `generation_config.json`, or (as Hugging Face does without one) the special
    token ids of its `config.json`."""
    directory = Path(path)
    if (directory / "generation_config.json").exists():
        return GenerationConfig.from_json(directory / "generation_config.json")
    hf = read_json(directory / "config.json")
    return GenerationConfig.from_dict({k: hf[k] for k in _GENERATION_KEYS if hf.get(k) is not None})


def _differences(cfg: TransformerConfig, other: TransformerConfig, model_name: str) -> list[str]:
    skip = _IRRELEVANT | _UNUSED_BY.get(model_name, set())
    return [f.name for f in dataclasses.fields(cfg)
            if f.name not in skip and getattr(cfg, f.name) != getattr(other, f.name)]


def hf_config_of(model) -> tuple[dict, Family, str]:
    """The config.json a model would be saved with; raises naming a field with no equivalent."""
    cls, cfg = type(model), model.cfg
    candidates = [f for f in FAMILIES if cls in f.architectures.values()]
    if not candidates:
        raise ValueError(f"{cls.__name__} has no Hugging Face equivalent; supported models: "
                         f"{', '.join(sorted({c.__name__ for f in FAMILIES for c in f.architectures.values()}))}")
    best = None
    for family in candidates:
        arch = family.architecture_of(cls)
        hf = dict(family.to_hf(cfg), architectures=[arch])
        try:
            diffs = _differences(cfg, family.to_config(hf), cls.__name__)
        except ValueError as e:  # the exported config is itself unsupported
            diffs = [str(e)]
        if best is None or len(diffs) < len(best[3]):
            best = (hf, family, arch, diffs)
    hf, family, arch, diffs = best
    if diffs:
        field = diffs[0]
        if not hasattr(cfg, field):
            raise ValueError(f"{cls.__name__} cannot be saved as {family.name}: {field}")
        expected = getattr(family.to_config(hf), field)
        raise ValueError(
            f"TransformerConfig.{field}={getattr(cfg, field)!r} has no Hugging Face equivalent for "
            f"{cls.__name__}: the closest architecture, {arch}, needs {field}={expected!r}"
            + (f" (also differs: {', '.join(diffs[1:])})" if len(diffs) > 1 else ""))
    return hf, family, arch


def _refuse_quantized(variables) -> None:
    """Quantized variables would be written as rounded floats (or not at all): name the fix."""
    from transformer_jax.quantization import SCALE_SUFFIX, QuantizedVariables

    if isinstance(variables, QuantizedVariables):
        raise ValueError(f"save_pretrained: these variables are {variables.dtype}-quantized; dequantize first "
                         "(save the float32 variables, or `tj.dequantize(q)`)")
    params = variables.get("params", {}) if isinstance(variables, Mapping) else {}
    flat = flatten_dict(nn.unbox(dict(params))) if isinstance(params, Mapping) else {}
    scaled = [p for p in flat if str(p[-1]).endswith(SCALE_SUFFIX)]
    if scaled:
        raise ValueError(f"save_pretrained: these variables are quantized ({'/'.join(scaled[0])}); dequantize "
                         "first (`tj.dequantize(q)`)")


def save_pretrained(model, variables, path, *, generation_config: dict | None = None) -> Path:
    """Write `config.json` and `model.safetensors` in the Hugging Face layout (float32).

    Raises a ValueError naming the field when the model has no reference equivalent (e.g. a
    `BlockSparse` encoder). Files are written beside their final names and renamed into place;
    then the files of a model saved there before that this save did not rewrite (a sharded
    index and its shards, generation_config.json, tokenizer files) are removed, as the reference
    library does for weights, so they never load beside (or instead of) the new ones.
    """
    _refuse_quantized(variables)
    hf, family, arch = hf_config_of(model)
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a directory")
    params = flatten_dict(nn.unbox(unstack_layers(variables["params"], model.cfg,
                                                  _ROOTS.get(type(model).__name__))))
    table = family.tensors(model.cfg, arch)
    missing = sorted({p for row in table for p in row.paths} - set(params))
    if missing:
        raise ValueError(f"save_pretrained: variables lack parameter(s) {['/'.join(p) for p in missing[:8]]}")
    tensors = {}
    for row in table:
        arrays = [np.asarray(params[p] if params[p].is_fully_addressable
                             else multihost_utils.process_allgather(params[p], tiled=True), np.float32)
                  for p in row.paths]
        tensors[row.name] = np.asarray(row.save(*arrays), np.float32)
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        write_tensors(directory / SINGLE, tensors)
        write_json(directory / "config.json", dict(hf, torch_dtype="float32"))
        written = {SINGLE, "config.json"}
        if generation_config is not None:
            write_json(directory / GENERATION, generation_config)
            written.add(GENERATION)
        remove_stale(directory, written)
    return directory
