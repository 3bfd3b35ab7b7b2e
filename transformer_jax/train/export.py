"""`transformer-jax export`: a trained workdir -> a Hugging Face model directory (LoRA merged), or
PEFT-layout adapters with `adapters=True`.

The model, its parameters and (with LoRA) the base the adapters were trained on come from the
workdir exactly as `eval` restores them; the files are written by `pretrained.save_pretrained`
and `pretrained.export.save_peft_adapters`. The tokenizer files come from `tokenizer` (a
directory), else `<workdir>/tokenizer/`, else `config.init_from` when that is a Hugging Face
directory holding tokenizer files. A classification task's label names become `id2label`.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformer_jax.pretrained.convert import _TOKENIZER_FILES, save_pretrained
from transformer_jax.pretrained.export import save_peft_adapters


def _has_tokenizer(directory: str) -> bool:
    return bool(directory) and any(os.path.isfile(os.path.join(directory, n)) for n in _TOKENIZER_FILES)


def tokenizer_source(workdir: str, config, tokenizer: str | None = None) -> str | None:
    """The directory whose tokenizer files the export copies (None: no tokenizer files)."""
    if tokenizer:
        if not _has_tokenizer(tokenizer):
            raise ValueError(f"--tokenizer={tokenizer!r} holds none of the tokenizer files "
                             f"({', '.join(_TOKENIZER_FILES)})")
        return tokenizer
    for candidate in (os.path.join(workdir, "tokenizer"), config.get("init_from", "") or ""):
        if _has_tokenizer(candidate):
            return candidate
    return None


def export_workdir(workdir: str, output: str, *, adapters: bool = False, family: str | None = None,
                   tokenizer: str | None = None, which: str = "latest") -> Path:
    """Write `output` from the latest (or best) checkpoint of `workdir`; returns its path."""
    from transformer_jax.train.build import load_config
    from transformer_jax.train.loop import restore_for_eval

    config = load_config(workdir)
    source = tokenizer_source(workdir, config, tokenizer)
    s, state, _ = restore_for_eval(config, workdir, which=which)
    if adapters:
        if s.lora is None:
            raise ValueError(f"--adapters: {workdir!r} trained without LoRA (config.lora.rank=0), so there are no "
                             "adapters; export the whole model (without --adapters)")
        out = save_peft_adapters(s.model, state.params, s.lora, output, family=family,
                                 base_model_name_or_path=config.get("init_from", "") or "")
        if source is not None:
            from transformer_jax.pretrained.convert import _write_tokenizer

            _write_tokenizer(source, out)
        return out
    labels = getattr(s.task, "labels", None)  # a classification task's label names, in id order
    id2label = list(labels) if labels and len(labels) == getattr(s.model.cfg, "num_classes", 0) else None
    return save_pretrained(s.model, {"params": s.eval_params(state)}, output, family=family, tokenizer=source,
                           id2label=id2label)
