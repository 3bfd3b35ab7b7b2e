"""Shared settings of the fine-tuning configs (configs/finetune_*.py): a pretrained checkpoint
(`init_from`, a Hugging Face directory or one of our workdirs) decides the architecture and the
tokenizer; the user's own files (or the built-in `tjax_pairs:train`, ...) hold the data. Without
`init_from` the model trains from scratch (`scratch_model`) with a built-in tokenizer. The brief's
recipe: AdamW with weight decay 0.01, a small learning rate, linear warmup then decay, a few epochs,
sequences truncated and padded to max_length.

    transformer-jax train --config configs/finetune_classification.py --workdir W \\
        --config.init_from=DIR --config.data.train_files=train.jsonl --config.data.validation_files=dev.jsonl

Used through `finetune(task, **data)` by the task configs; not a config of its own.
"""

import os
import runpy

import ml_collections
from ml_collections.config_dict import FieldReference

from transformer_jax.data import files


def _sibling(name: str):
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def finetune(task: str, **data) -> ml_collections.ConfigDict:
    c = _sibling("default.py")
    c.task = task  # transformer_jax/tasks/registry.py FINETUNE: what is learned
    c.init_from = ""  # the pretrained directory: architecture, weights, tokenizer, generation settings
    # Only the run's own settings; the architecture is the checkpoint's (a field set here that
    # contradicts it is an error). None: the checkpoint's value.
    c.model = ml_collections.ConfigDict({k: FieldReference(None, field_type=object)
                                         for k in ("dropout_rate", "dtype", "scan_layers", "remat")})
    # Without init_from: trained from scratch, this architecture (config.model's fields on top) with a
    # built-in tokenizer (data.tokenizer: SentencePiece trained on the train files, or bytes).
    vocab = FieldReference(2000)
    c.scratch_model = ml_collections.ConfigDict(dict(
        vocab_size=vocab, d_model=128, num_heads=4, d_ff=512, num_encoder_layers=2, num_decoder_layers=2,
        dropout_rate=0.1, max_len=512, position="learned", activation="gelu", norm_position="pre",
        type_vocab_size=2, pooling="cls"))
    c.data = ml_collections.ConfigDict(dict(
        dataset="files",  # which data: the files below (JSONL, JSON, CSV, TSV, text; paths or globs)
        train_files="", validation_files="", test_files="",
        # role -> column name, e.g. --config.data.columns.text=review; "" = the defaults (data/files.py)
        columns=ml_collections.ConfigDict({role: "" for role in files.ROLES}),
        labels=(),  # label names in id order; () = the sorted set of the train files' labels
        tokenizer="sentencepiece", vocab_size=vocab, max_src_len=128, max_tgt_len=64, pack=False, data_dir="",
        text_keys=(), eval_split="validation", test_split="test"))
    c.data.update(**data)
    c.num_epochs = 3  # sets num_train_steps: epochs x train records / batch_size
    c.batch_size = 16
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=5e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=1.0))
    c.schedule = ml_collections.ConfigDict(dict(name="linear", warmup_steps=10, end_learning_rate=0.0))
    c.label_smoothing = 0.0
    c.log_every = 10
    c.eval_every = 0  # the task's metrics run at the end, on data.test_split (or set eval_every)
    c.checkpoint_every = 500
    c.best_metric = ""
    c.decode = ml_collections.ConfigDict(dict(
        beam_size=1, length_penalty=1.0, max_len=64, batch_size=32, max_examples=0))
    return c
