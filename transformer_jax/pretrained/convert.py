"""`from_pretrained` and `save_pretrained`: Hugging Face model directories <-> (model, variables).

Loading checks everything it can before reading a byte of tensor data: the files, the
architecture, every config field, the full set of tensor names and each tensor's shape (from the
safetensors headers). Then it reads one tensor at a time and places it straight into its sharding
(from the logical rules table) when a mesh is given, so each device only ever holds its shard and
the host holds at most one tensor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
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
from transformer_jax.pretrained.families import ARCHITECTURES, FAMILIES, HEADS, Family, family as family_named
from transformer_jax.pretrained.match import LoadReport, backbone_names, match
from transformer_jax.pretrained.tensors import Tensor
from transformer_jax.scan import stack_layers, unstack_layers

log = logging.getLogger("transformer_jax.pretrained")

# Fields that do not change what a model computes at inference, or that its class never reads.
_IRRELEVANT = {"dtype", "param_dtype", "dropout_rate", "scan_layers", "remat", "family", "hf_config"}
# bare stacks: their own parameters hold the layers (a ViT's encoder layers sit at its root)
_ROOTS = {"Encoder": "encoder", "Decoder": "decoder", "ViT": "encoder", "ViTEncoder": "encoder"}
_ENCODER_ONLY_UNUSED = {"num_decoder_layers", "decoder_attention", "cross_attention", "share_embeddings"}
_UNUSED_BY = {
    "Encoder": _ENCODER_ONLY_UNUSED | {"tie_output", "logits_bias", "logits_scale", "num_classes", "pooling"},
    "MaskedLM": _ENCODER_ONLY_UNUSED | {"num_classes", "pooling", "pooler_activation"},
    "EncoderClassifier": _ENCODER_ONLY_UNUSED | {"tie_output", "logits_bias", "logits_scale"},
    "TokenClassifier": _ENCODER_ONLY_UNUSED | {"tie_output", "logits_bias", "logits_scale", "pooling",
                                               "pooler_activation"},
    "QuestionAnswering": _ENCODER_ONLY_UNUSED | {"tie_output", "logits_bias", "logits_scale", "pooling",
                                                 "pooler_activation", "num_classes"},
    "DecoderLM": {"num_encoder_layers", "encoder_attention", "cross_attention", "share_embeddings",
                  "num_classes", "pooling", "pooler_activation", "pad_id", "type_vocab_size"},
    "Transformer": {"num_classes", "pooling", "pooler_activation", "type_vocab_size"},
}
_IMAGE_UNUSED = _ENCODER_ONLY_UNUSED | {"vocab_size", "max_len", "pad_id", "tie_output", "logits_bias", "logits_scale",
                                        "type_vocab_size", "embed_scale", "embed_norm", "position_offset",
                                        "pooler_activation"}
_UNUSED_BY.update(ViT=_IMAGE_UNUSED, ViTEncoder=_IMAGE_UNUSED | {"num_classes"})
# config.json fields that say nothing about the model (not kept in TransformerConfig.hf_config)
_NOT_KEPT = {"architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path"}


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


def _finite(raw: np.ndarray, name: str, directory: Path) -> np.ndarray:
    """`raw`, or a named error when it holds NaN or inf (a damaged checkpoint, never loaded in silence)."""
    bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
    if bad:
        raise ValueError(f"{directory}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf) of "
                         f"{raw.size}; the checkpoint is damaged")
    return raw


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
    if hasattr(model, "example_inputs"):  # a model of other inputs than token ids (ViT: images)
        return model.example_inputs()
    ids = jnp.ones((1, 1), jnp.int32)
    return (ids, ids) if isinstance(model, Transformer) else (ids,)


def abstract_params(model) -> dict:
    """The model's (boxed) parameter shapes, without allocating them."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *_example_inputs(model)))["params"]


def _expected_shape(row: Tensor, shapes: dict) -> tuple[int, ...]:
    structs = [jax.ShapeDtypeStruct(shapes[p], jnp.float32) for p in row.paths]
    return tuple(jax.eval_shape(row.save, *structs).shape)


def _hf_with_labels(hf: dict, head: str, num_labels: int | None, id2label) -> dict:
    """config.json with the caller's labels: `id2label` (a list or {id: label}) sets `num_labels`."""
    if id2label is not None:
        labels = dict(enumerate(id2label)) if isinstance(id2label, (list, tuple)) else dict(id2label)
        labels = {int(k): str(v) for k, v in labels.items()}
        if sorted(labels) != list(range(len(labels))):
            raise ValueError(f"id2label must map 0..N-1 to labels; got ids {sorted(labels)}")
        if num_labels is not None and num_labels != len(labels):
            raise ValueError(f"num_labels={num_labels} contradicts id2label, which has {len(labels)} labels")
        hf = dict(hf, id2label={str(k): v for k, v in labels.items()},
                  label2id={v: k for k, v in labels.items()})
        num_labels = len(labels)
    if num_labels is not None:
        if head not in ("sequence_classification", "token_classification"):
            raise ValueError(f"num_labels={num_labels} is for the classification heads; head={head!r} has none")
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer (1 = regression); got {num_labels!r}")
        hf = dict(hf, num_labels=num_labels)
        if id2label is None and len(hf.get("id2label") or {}) != num_labels:  # stale labels of another head
            hf.pop("id2label", None)
            hf.pop("label2id", None)
    return hf


def _kept_fields(hf: dict, family: Family, cfg: TransformerConfig) -> tuple[tuple[str, str], ...]:
    """The config.json fields `family.to_hf` does not write back, as (key, JSON) pairs."""
    written = set(family.to_hf(cfg))
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in hf.items()
                        if k not in written and k not in _NOT_KEPT))


def _resolve_head(head: str | None, arch: str, family: Family, config_path: Path) -> str:
    if head is None:
        return family.architectures[arch]
    if head not in HEADS and head != "image_classification":
        raise ValueError(f"head={head!r} is not a head; valid: {', '.join([*HEADS, 'image_classification'])}")
    if head not in family.heads:
        raise ValueError(f"{config_path}: {arch} ({family.name}) cannot load as head={head!r}; "
                         f"its family has: {', '.join(family.heads)}")
    return head


def from_pretrained(path, head: str | None = None, num_labels: int | None = None, id2label=None, *,
                    mesh=None, dtype: str | None = None, param_dtype: str = "float32",
                    rules=sharding.LOGICAL_RULES, seed: int = 0, return_report: bool = False,
                    **config_overrides):
    """Load a Hugging Face model directory: returns `(model, variables)` (plus a `LoadReport` with
    `return_report=True`).

    `head` picks the model (see `HEADS`: "encoder", "masked_lm", "sequence_classification",
    "token_classification", "question_answering", "causal_lm", "seq2seq", ...); by default
    `config.json`'s `architectures[0]`. Any encoder checkpoint loads under any encoder head: the
    head's weights the checkpoint lacks are initialised (from `seed`) and stored weights the head
    does not use are dropped; both are logged and listed in the report. `num_labels` (1 =
    regression) or `id2label` size a classifier. Weights come from `model.safetensors` or a sharded
    `model.safetensors.index.json`. With `mesh`, every parameter is created already sharded by the
    logical rules. `dtype` sets the computation dtype; `config_overrides` replace further
    `TransformerConfig` fields (e.g. `max_len`, `dropout_rate`; `scan_layers=True` loads per layer,
    then stacks the layers with `stack_layers`).
    """
    directory = Path(path)
    files = weight_files(directory)  # first: a missing directory or weights file is the likeliest error
    hf = read_json(directory / "config.json")
    arch, family = _architecture(hf, directory / "config.json")
    head = _resolve_head(head, arch, family, directory / "config.json")
    reader = TensorReader(files)
    if family.resolve is not None:
        hf = family.resolve(hf, reader)
    target = family.architecture(head)
    relabelled = num_labels is not None or id2label is not None
    hf = _hf_with_labels(hf, head, num_labels, id2label)
    cfg = config_of(family, hf, directory / "config.json")
    overrides = dict(config_overrides, param_dtype=param_dtype)
    if dtype is not None:
        overrides["dtype"] = dtype
    stored_cfg, cfg = cfg, cfg.replace(**overrides)
    _check_overrides(stored_cfg, cfg, config_overrides, directory)
    cfg = cfg.replace(family=family.name, hf_config=_kept_fields(hf, family, cfg))
    model = family.model(head, cfg.replace(scan_layers=False))  # the tables name layer_<i>

    boxed = abstract_params(model)
    shardings = flatten_dict(sharding.logical_shardings(boxed, mesh, rules)) if mesh is not None else {}
    shapes = {p: tuple(x.shape) for p, x in flatten_dict(nn.unbox(boxed)).items()}
    table = family.tensors(cfg, target)
    covered = [p for row in table for p in row.paths]
    assert sorted(covered) == sorted(shapes), (  # a bug in a tensor table, never the user's input
        f"{family.name} table vs model: {sorted(set(covered) ^ set(shapes))}")

    stored, fresh, dropped = match(table, reader.names(), family, cfg, directory, strict=target == arch)
    backbone = backbone_names(family, cfg)
    for row in table:
        if row.name not in stored:
            continue
        want, got = _expected_shape(row, shapes), reader.shape(stored[row.name])
        if reader.dtype(stored[row.name]) not in _FLOAT_DTYPES:
            raise ValueError(f"{directory}: tensor {stored[row.name]!r} is {_dtype_name(reader.dtype(stored[row.name]))} "
                             f"in the checkpoint; weights must be floating point ({', '.join(_FLOAT_DTYPES)}), "
                             "not cast in silence")
        if want == got:
            continue
        if relabelled and family.canonical(row.name) not in backbone:  # a classifier sized anew
            fresh.append(row.name)
            dropped.append(stored.pop(row.name))
            continue
        raise ValueError(f"{directory}: tensor {stored[row.name]!r} has shape {got} in the checkpoint, "
                         f"but config.json implies {want}")

    np_dtype = jnp.dtype(param_dtype)
    params = {}
    if fresh:  # initialise the head's new weights as the model itself would
        init = flatten_dict(nn.unbox(model.init(jax.random.key(seed), *_example_inputs(model))["params"]))
    for row in table:
        values = ([init[p] for p in row.paths] if row.name not in stored
                  else row.load(_finite(reader.read(stored[row.name]), stored[row.name], directory)))
        for p, value in zip(row.paths, values):
            value = np.asarray(value, np_dtype)
            if p in shardings:
                params[p] = jax.make_array_from_callback(value.shape, shardings[p], lambda idx, v=value: v[idx])
            else:
                params[p] = jnp.asarray(value)
    report = LoadReport(str(directory), arch, head, tuple(sorted(stored.values())), tuple(fresh),
                        tuple(sorted(dropped)))
    if fresh or dropped:
        log.warning("%s", report)
    if cfg.scan_layers:
        model = family.model(head, cfg)  # stack the layers, then re-shard
        params = stack_layers(unflatten_dict(params), cfg, _ROOTS.get(type(model).__name__))
        if mesh is not None:
            params = jax.device_put(params, sharding.logical_shardings(abstract_params(model), mesh, rules))
    else:
        params = unflatten_dict(params)
    return (model, {"params": params}, report) if return_report else (model, {"params": params})


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


def head_of(model) -> str:
    """The head name of a model instance (`HEADS`), or a ValueError naming the savable classes."""
    for head, cls in HEADS.items():
        if type(model) is cls:
            return head
    if isinstance(getattr(type(model), "head_name", None), str):  # a model a family builds (ViT)
        return type(model).head_name
    raise ValueError(f"{type(model).__name__} has no Hugging Face equivalent; savable models: "
                     f"{', '.join(sorted({c.__name__ for c in HEADS.values()}))}")


def _family_of(model, head: str, family) -> Family:
    """The family to save as: `family` (a name or Family), else the one the model was loaded from
    (`TransformerConfig.family`), else, for a model built from scratch, the one family whose
    config.json holds its configuration exactly; never a nearest match."""
    if isinstance(family, Family):
        return family
    name = family or model.cfg.family
    if name is not None:
        return family_named(name)
    candidates = [f for f in FAMILIES.values() if head in f.heads]
    exact = [f for f in candidates if not _config_differences(model, f, None)[2]]
    if len(exact) == 1:
        return exact[0]
    if not exact:
        why = "; ".join(f"{f.name}: {_config_differences(model, f, None)[2][0]}" for f in candidates)
        raise ValueError(f"save_pretrained: no family holds this {type(model).__name__} configuration exactly "
                         f"({why}); name one with family=... to see every field it lacks")
    raise ValueError(f"save_pretrained: the {type(model).__name__} configuration fits several families "
                     f"({', '.join(f.name for f in exact)}); name one, e.g. family={exact[0].name!r}")


def _labels(hf: dict, num_classes: int, id2label) -> dict:
    """id2label/label2id for `num_classes` labels: the caller's, else the loaded ones when they fit,
    else LABEL_<i> (as the reference names them)."""
    if id2label is not None:
        labels = dict(enumerate(id2label)) if isinstance(id2label, (list, tuple)) else dict(id2label)
        labels = {int(k): str(v) for k, v in labels.items()}
        if sorted(labels) != list(range(num_classes)):
            raise ValueError(f"save_pretrained: id2label has ids {sorted(labels)} but the model has "
                             f"{num_classes} classes (ids 0..{num_classes - 1})")
    elif len(hf.get("id2label") or {}) == num_classes:
        labels = {int(k): v for k, v in hf["id2label"].items()}
    else:
        labels = {i: f"LABEL_{i}" for i in range(num_classes)}
    return dict(id2label={str(i): labels[i] for i in sorted(labels)},
                label2id={labels[i]: i for i in sorted(labels)})


def _config_differences(model, family: Family, id2label) -> tuple[dict, str, list[str]]:
    """(config.json, architecture, the TransformerConfig fields it would not reproduce)."""
    head, cfg = head_of(model), model.cfg
    arch = family.architecture(head)
    kept = {k: json.loads(v) for k, v in cfg.hf_config}
    hf = dict(kept, **family.to_hf(cfg), **family.model_fields(model), architectures=[arch])
    if head in ("sequence_classification", "token_classification"):
        hf.update(_labels(kept, cfg.num_classes, id2label))
        hf["num_labels"] = cfg.num_classes
    elif head == "question_answering" and len(kept.get("id2label") or {}) not in (0, 2):
        hf.update(_labels({}, 2, None))  # a source's labels of another head: QA has two (start, end)
    try:
        diffs = _differences(cfg, family.to_config(hf), type(model).__name__)
    except ValueError as e:  # the exported config is itself unsupported
        diffs = [str(e)]
    return hf, arch, diffs


def hf_config_of(model, family=None, id2label=None) -> tuple[dict, Family, str]:
    """The config.json a model would be saved with; raises naming a field with no equivalent."""
    head = head_of(model)
    cls, cfg = type(model), model.cfg
    family = _family_of(model, head, family)
    hf, arch, diffs = _config_differences(model, family, id2label)
    if diffs:
        field = diffs[0]
        if not hasattr(cfg, field):
            raise ValueError(f"{cls.__name__} cannot be saved as {family.name}: {field}")
        expected = getattr(family.to_config(hf), field)
        raise ValueError(
            f"TransformerConfig.{field}={getattr(cfg, field)!r} has no Hugging Face equivalent for "
            f"{cls.__name__}: {arch} ({family.name}) needs {field}={expected!r}"
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


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "source.spm",
                    "target.spm", "added_tokens.json")


def _write_tokenizer(tokenizer, directory: Path) -> set[str]:
    """A tokenizer object with `.save(dir)`, or a directory whose tokenizer files are copied; returns
    the names written (so a stale-file sweep keeps them)."""
    if hasattr(tokenizer, "save"):
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            tokenizer.save(tmp)
            names = set(os.listdir(tmp))
            for name in names:
                os.replace(Path(tmp) / name, directory / name)
        return names
    source = Path(tokenizer)
    files = [source / n for n in _TOKENIZER_FILES if (source / n).exists()]
    if not files:
        raise ValueError(f"save_pretrained: tokenizer={str(source)!r} holds none of the tokenizer files "
                         f"({', '.join(_TOKENIZER_FILES)})")
    for file in files:
        tmp = directory / (file.name + ".tmp")
        shutil.copyfile(file, tmp)
        os.replace(tmp, directory / file.name)
    return {file.name for file in files}


def _generation_json(gc: GenerationConfig, seq2seq: bool) -> dict:
    """A GenerationConfig as the reference's generation_config.json fields."""
    eos = list(gc.eos_ids)
    out = {"decoder_start_token_id" if seq2seq else "bos_token_id": gc.decoder_start_id,
           "eos_token_id": eos[0] if len(eos) == 1 else eos, "pad_token_id": gc.pad_id,
           "forced_bos_token_id": gc.forced_bos_id,
           "forced_eos_token_id": list(gc.forced_eos_id) if isinstance(gc.forced_eos_id, tuple) else gc.forced_eos_id,
           "max_new_tokens": gc.max_new_tokens, "max_length": gc.max_length}
    return {k: v for k, v in out.items() if v is not None and v != []}


def save_pretrained(model, variables, path, *, family=None, tokenizer=None, id2label=None,
                    generation_config: dict | GenerationConfig | None = None) -> Path:
    """Write a Hugging Face model directory: `config.json` (the head's architecture name, labels,
    and the loaded config's other fields such as its dropout probabilities), `model.safetensors`
    (float32), the tokenizer files and, for generative heads, `generation_config.json`.

    `family` names the family to save as ("bert", "roberta", ...); by default the one the model was
    loaded from (`TransformerConfig.family`). `tokenizer` is an object with `.save(dir)` (e.g.
    `tj.load_tokenizer`'s) or a directory to copy tokenizer files from. `id2label` (a list or
    {id: label}) names the classes. Raises a ValueError naming the field when the model has no
    reference equivalent (e.g. a `BlockSparse` encoder). Files are written beside their final names
    and renamed into place. Then the files of a model saved there before that this save did not
    rewrite (a sharded index and its shards, generation_config.json, tokenizer files) are removed, as
    the reference library does for weights, so they never load beside (or instead of) the new ones.
    """
    _refuse_quantized(variables)
    hf, family, arch = hf_config_of(model, family, id2label)
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a directory")
    params = flatten_dict(nn.unbox(unstack_layers(variables["params"], model.cfg,
                                                  _ROOTS.get(type(model).__name__))))
    cfg = model.cfg.replace(hf_config=_kept_fields(hf, family, model.cfg))  # as written (a ViT's geometry)
    table = family.tensors(cfg, arch)
    backbone = backbone_names(family, cfg)
    # a bare Encoder built without its pooler saves without it (the reference initialises one)
    table = [row for row in table if family.canonical(row.name) in backbone
             or any(p in params for p in row.paths)]
    missing = sorted({p for row in table for p in row.paths} - set(params))
    if missing:
        raise ValueError(f"save_pretrained: variables lack parameter(s) {['/'.join(p) for p in missing[:8]]}")
    tensors = {}
    for row in table:
        arrays = [np.asarray(params[p] if params[p].is_fully_addressable
                             else multihost_utils.process_allgather(params[p], tiled=True), np.float32)
                  for p in row.paths]
        tensors[row.name] = np.asarray(row.save(*arrays), np.float32)
    if isinstance(generation_config, GenerationConfig):
        generation_config = _generation_json(generation_config, family.architectures[arch] == "seq2seq")
    if generation_config is None and family.architectures[arch] in ("causal_lm", "seq2seq"):
        generation_config = {k: hf[k] for k in _GENERATION_KEYS if hf.get(k) is not None}
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        write_tensors(directory / SINGLE, tensors)
        write_json(directory / "config.json", dict(hf, torch_dtype="float32"))
        written = {SINGLE, "config.json"}
        if generation_config is not None:
            write_json(directory / GENERATION, generation_config)
            written.add(GENERATION)
        if tokenizer is not None:
            written |= _write_tokenizer(tokenizer, directory)
        remove_stale(directory, written)
    return directory
