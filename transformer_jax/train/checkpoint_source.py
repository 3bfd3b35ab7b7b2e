"""The checkpoint decides (`config.init_from`): the architecture and the tokenizer of a run that
starts from a Hugging Face directory or one of our workdirs come from that checkpoint.

- The model's `TransformerConfig` is the checkpoint's (`config.json` through its family, or the
  source workdir's saved `config.model`), with the run's own settings from the experiment config on
  top (`RUN_FIELDS`: dropout, dtypes, scan/remat, attention backends) and the head's size from
  the task (`num_classes`: its labels) or the experiment config.
- Any other field the experiment config sets that differs from the checkpoint's is an error naming
  the field, the config's value and the checkpoint's value: never a silent mismatch (a pre-LN model
  loading a post-LN BERT's tensors by name would train and report numbers, wrongly).
- A Hugging Face directory's tokenizer files are copied into `<workdir>/tokenizer` and read from
  there (`tj.load_tokenizer`), so the workdir keeps what its embedding rows mean.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from transformer_jax.config import TransformerConfig

# Settings of the run, not of the checkpoint: taken from the experiment config when it sets them.
RUN_FIELDS = ("dropout_rate", "dtype", "param_dtype", "scan_layers", "remat", "encoder_attention",
              "decoder_attention", "cross_attention", "moe_capacity_factor", "moe_load_balance_loss",
              "moe_router_z_loss")
HEAD_FIELDS = ("num_classes",)  # the head is the task's (its labels), not the checkpoint's
_ENCODER_ONLY = ("num_decoder_layers", "decoder_attention", "cross_attention", "share_embeddings")
UNUSED_BY = {  # fields a model class never reads: a differing value contradicts nothing
    "MaskedLM": (*_ENCODER_ONLY, "num_classes", "pooling"),
    "EncoderClassifier": (*_ENCODER_ONLY, "tie_output", "logits_bias", "logits_scale"),
    "TokenClassifier": (*_ENCODER_ONLY, "tie_output", "logits_bias", "logits_scale", "pooling"),
    "QuestionAnswering": (*_ENCODER_ONLY, "tie_output", "logits_bias", "logits_scale", "pooling"),
    "Encoder": (*_ENCODER_ONLY, "tie_output", "logits_bias", "logits_scale", "num_classes", "pooling"),
    "DecoderLM": ("num_encoder_layers", "encoder_attention", "cross_attention", "share_embeddings",
                  "num_classes", "pooling", "pad_id", "type_vocab_size"),
    "Transformer": ("num_classes", "pooling", "type_vocab_size"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "spiece.model", "sentencepiece.bpe.model", "source.spm", "target.spm",
                   "added_tokens.json", "generation_config.json")


def init_from(config) -> str:
    return config.get("init_from", "") or ""


def is_workdir(path: str) -> bool:
    from transformer_jax.checkpoint import committed_steps

    return bool(committed_steps(os.path.join(path, "checkpoints"))) and os.path.exists(os.path.join(path, "config.pkl"))


def is_pretrained_dir(path: str) -> bool:
    """A Hugging Face model directory (config.json), not one of our workdirs."""
    return bool(path) and os.path.exists(os.path.join(path, "config.json")) and not is_workdir(path)


HEAD_OF_MODEL = {"EncoderClassifier": "sequence_classification", "TokenClassifier": "token_classification",
                 "QuestionAnswering": "question_answering", "MaskedLM": "masked_lm", "DecoderLM": "causal_lm",
                 "Transformer": "seq2seq", "Encoder": "encoder"}


def source_config(path: str, model_class: str = "", num_labels: int | None = None,
                  id2label=None) -> tuple[TransformerConfig, str, str, object]:
    """(the checkpoint's TransformerConfig, where it was read, its model class name, its variables
    or None). A Hugging Face directory is loaded once here under the head of `model_class`
    (`from_pretrained(head=...)`: any encoder checkpoint under any encoder head); the weights the
    head initialised afresh are left out of the variables, so the run reports them as fresh. A
    workdir's config is its saved `config.model` (its parameters are read when the run starts)."""
    if is_workdir(path):
        from transformer_jax.train.build import load_config
        from transformer_jax.train.experiment import build_model, model_config

        saved = load_config(path)
        return model_config(saved), os.path.join(path, "config.pkl"), type(build_model(saved)).__name__, None
    from flax.traverse_util import flatten_dict, unflatten_dict

    from transformer_jax.pretrained import from_pretrained
    from transformer_jax.pretrained.families import family

    head = HEAD_OF_MODEL.get(model_class)
    labels = {"num_labels": num_labels} if head in ("sequence_classification", "token_classification") and \
        num_labels is not None else {}
    if id2label is not None and labels:
        labels = {"id2label": list(id2label)}
    model, variables, report = from_pretrained(path, head=head, return_report=True, **labels)
    fam = family(model.cfg.family)
    fresh = {p for row in fam.tensors(model.cfg, fam.architecture(report.head)) if row.name in report.fresh
             for p in row.paths}
    params = {p: v for p, v in flatten_dict(dict(variables["params"])).items() if p not in fresh}
    return model.cfg, os.path.join(path, "config.json"), type(model).__name__, {"params": unflatten_dict(params)}


def _differs(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) != tuple(b)
    return a != b


def contradictions(given: dict, checkpoint: TransformerConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """'config.model.FIELD=VALUE, but the checkpoint has VALUE' for every field `given` (the
    experiment's `config.model`, attention specs parsed) sets other than the checkpoint's."""
    skip = set(RUN_FIELDS) | set(HEAD_FIELDS) | set(ignore) | {"preset", "family", "hf_config"}  # provenance
    out = []
    for f in dataclasses.fields(TransformerConfig):
        if f.name in skip or f.name not in given or given[f.name] is None:
            continue
        if _differs(given[f.name], getattr(checkpoint, f.name)):
            out.append(f"config.model.{f.name}={given[f.name]!r}, but the checkpoint has {getattr(checkpoint, f.name)!r}")
    return out


def decided_config(config, given: dict, model_class: str, num_classes: int | None = None, labels=None):
    """(the run's TransformerConfig, the source's variables or None), or a named error listing every
    contradiction. `given`: the experiment's `config.model` (attention specs parsed); `model_class`:
    the class this run trains (fields it never reads are not compared)."""
    path = init_from(config)
    checkpoint, where, source_class, variables = source_config(path, model_class, num_classes, labels)
    ignore = (*UNUSED_BY.get(model_class, ()), *UNUSED_BY.get(source_class, ()))
    bad = contradictions(given, checkpoint, ignore)
    if bad:
        raise ValueError(f"config.init_from={path!r} decides the architecture ({where}), and the experiment config "
                         f"contradicts it: " + "; ".join(bad) + ". Remove these fields from config.model (or set "
                         "them to the checkpoint's values)")
    run = {k: given[k] for k in RUN_FIELDS if given.get(k) is not None}
    head = {"num_classes": num_classes} if num_classes is not None else \
        {k: given[k] for k in HEAD_FIELDS if given.get(k) is not None}
    return checkpoint.replace(**run, **head), variables


def copy_tokenizer(path: str, workdir: str) -> str:
    """`path`'s tokenizer files copied into `<workdir>/tokenizer` (once); returns that directory.
    A Hugging Face directory without any is an error: a fresh tokenizer would index the embedding
    rows by unrelated ids."""
    dest = os.path.join(workdir, "tokenizer")
    if os.path.isdir(dest):
        return dest
    found = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(path, f))]
    if not any(f != "generation_config.json" for f in found):
        raise ValueError(f"config.init_from={path!r} has no tokenizer files (one of {', '.join(TOKENIZER_FILES[:9])}); "
                         "the checkpoint's embedding rows need its own tokenizer")
    tmp = f"{dest}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    for f in found:
        shutil.copyfile(os.path.join(path, f), os.path.join(tmp, f))
    shutil.copyfile(os.path.join(path, "config.json"), os.path.join(tmp, "config.json"))  # model_input_names
    try:
        os.replace(tmp, dest)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
