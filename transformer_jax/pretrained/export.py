"""LoRA adapters in the PEFT layout: `adapter_config.json` + `adapter_model.safetensors`.

Our adapters (`tj.init_lora`, `lora.save_adapters`) hold per projection A [*in, r] and B [r, *out]
(the update is alpha / r * A @ B on our kernel [*in, *out]) and, for parameters trained in full
(a fresh classifier), the parameter itself. PEFT holds per module `lora_A.weight` [r, in] and
`lora_B.weight` [out, r] (the update is alpha / r * B @ A on the torch weight [out, in]) and the
full parameters under `modules_to_save`. The family's tensor table names each module and fixes
the flattening of our multi-axis kernels ([D, N, H] -> N * H outputs), so A = a.reshape(-1, r).T
and B = b.reshape(r, -1).T.
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import numpy as np
from flax.traverse_util import flatten_dict

from transformer_jax.lora import LoraConfig
from transformer_jax.pretrained.checkpoint_files import write_json, write_tensors
from transformer_jax.pretrained.convert import _family_of, head_of
from transformer_jax.scan import unstack_layers

PEFT_TASK = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
             "question_answering": "QUESTION_ANS", "causal_lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM",
             "encoder": "FEATURE_EXTRACTION", "masked_lm": None}
_ROOTS = {"Encoder": "encoder", "Decoder": "decoder"}


def _factors_and_full(adapters) -> tuple[dict, dict]:
    """({projection path: (A, B)}, {parameter path: value trained in full})."""
    flat = flatten_dict(nn.unbox(adapters))
    factors, full = {}, {}
    for path, value in flat.items():
        if path[-1] in ("a", "b") and path[:-1] + ("a",) in flat and path[:-1] + ("b",) in flat:
            pair = factors.setdefault(path[:-1], [None, None])
            pair[path[-1] == "b"] = np.asarray(value, np.float32)
        else:
            full[path] = value
    return {p: tuple(ab) for p, ab in factors.items()}, full


def peft_adapters(model, adapters, config: LoraConfig, *, family=None,
                  base_model_name_or_path: str = "") -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config.json fields, adapter_model.safetensors tensors) of our adapters for `model`.

    Raises a ValueError naming the projection when a module has no one-to-one reference module
    (GPT-2's fused q/k/v `c_attn`)."""
    head = head_of(model)
    family = _family_of(model, head, family)
    cfg = model.cfg
    table = family.tensors(cfg, family.architecture(head))
    by_path = {row.paths[0]: row for row in table if len(row.paths) == 1}
    adapters = unstack_layers(nn.unbox(adapters), cfg, _ROOTS.get(type(model).__name__))
    factors, full = _factors_and_full(adapters)
    tensors, targets, keep = {}, [], []
    for path, (a, b) in sorted(factors.items()):
        row = by_path.get(path + ("kernel",))
        if row is None or not row.name.endswith(".weight"):
            raise ValueError(f"export --adapters: the adapted projection {'/'.join(path)} has no single "
                             f"{family.name} module (it is part of a fused tensor); export merged instead")
        module = row.name.removesuffix(".weight")
        r = a.shape[-1]
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.reshape(-1, r).T
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.reshape(r, -1).T
        targets.append(module)
    for path, value in sorted(full.items()):
        row = by_path.get(path)
        if row is None:
            raise ValueError(f"export --adapters: {'/'.join(path)} (trained in full) has no single "
                             f"{family.name} tensor")
        tensors[f"base_model.model.{row.name}"] = np.asarray(row.save(np.asarray(value, np.float32)), np.float32)
        keep.append(row.name.rsplit(".", 1)[0])
    peft_config = {
        "peft_type": "LORA", "task_type": PEFT_TASK[head], "r": config.rank, "lora_alpha": config.alpha,
        "target_modules": sorted(targets), "modules_to_save": sorted(set(keep)) or None, "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": family.name == "gpt2", "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path, "init_lora_weights": True, "use_dora": False,
        "use_rslora": False,
    }
    return peft_config, tensors


def save_peft_adapters(model, adapters, config: LoraConfig, path, *, family=None,
                       base_model_name_or_path: str = "") -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` (PEFT's layout) into `path`."""
    peft_config, tensors = peft_adapters(model, adapters, config, family=family,
                                         base_model_name_or_path=base_model_name_or_path)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    write_tensors(directory / "adapter_model.safetensors", tensors)
    write_json(directory / "adapter_config.json", peft_config)
    return directory
