"""What every task shares: its batch fields declared once, and the layout derived from them.

A task declares `fields`, a tuple of `Field(name, length, dtype, role, segments)`: the arrays one
featurized example holds. From that one declaration come the padded row (`pad`), the packer's
lengths and names (`pack_lengths`, `unpack_names`), the batch's shapes (`batch_shapes`) and the
model's inputs (`model_inputs`); nothing repeats the names.

Length keys: "src" is S (`config.data.max_src_len`, an encoder input), "tgt" is T
(`config.data.max_tgt_len`, a decoder input); None is one value per example; a tuple is a fixed
shape (an image). A field with `segments=PREFIX` is a row of tokens: the row's segment ids
(`PREFIX + "segment_ids"`, 1 for tokens, 0 for padding; 1, 2, ... per packed example) and
positions (`PREFIX + "positions"`, restarting at 0 in each segment) are derived beside it.
Roles: "arg" is a positional model input (in declaration order), "kwarg" a keyword input, "target"
reaches only the loss; derived segment ids and positions are keyword inputs under their own names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

LENGTHS = ("src", "tgt")
ROLES = ("arg", "kwarg", "target")


@dataclasses.dataclass(frozen=True)
class Field:
    """One array of a featurized example (see the module docstring)."""

    name: str
    length: str | tuple[int, ...] | None = "src"
    dtype: Any = np.int32
    role: str = "arg"
    segments: str | None = None  # prefix of the derived segment ids / positions (a row of tokens)

    def __post_init__(self):
        if isinstance(self.length, str) and self.length not in LENGTHS:
            raise ValueError(f"Field({self.name!r}).length={self.length!r}: valid: {', '.join(LENGTHS)}, None, a shape")
        if self.role not in ROLES:
            raise ValueError(f"Field({self.name!r}).role={self.role!r}: valid: {', '.join(ROLES)}")

    def size(self, src_len: int, tgt_len: int) -> tuple[int, ...]:
        """The shape of one example's entry."""
        if self.length is None:
            return ()
        if isinstance(self.length, tuple):
            return self.length
        return (src_len if self.length == "src" else tgt_len,)

    def derived(self) -> tuple[str, str]:
        return f"{self.segments}segment_ids", f"{self.segments}positions"


def pad_to(x: np.ndarray, n: int) -> np.ndarray:
    return np.pad(x, (0, n - len(x)))


def _shape(dims, dtype):
    import jax

    return jax.ShapeDtypeStruct(tuple(dims), dtype)


class Task:
    """Shared behaviour, all derived from `fields` (no deep inheritance: each task overrides what differs).

    Subclasses are frozen dataclasses and set `fields` (a class attribute, or a property where it
    depends on the instance), `name`, `model_type`, `featurize(record, fz)`, `targets_and_weights(batch)`
    and `text_features()`.
    """

    fields: ClassVar[tuple[Field, ...]] = ()
    name: ClassVar[str]
    model_type: ClassVar[str]
    unit: ClassVar[str] = "tokens"  # what the progress line counts per second
    packable: ClassVar[bool] = True
    symbols: ClassVar[tuple[str, ...]] = ()  # extra tokenizer pieces the task needs ([MASK])
    augment_eval: ClassVar[bool] = True  # `augment` applies to eval splits too (BERT masks them)
    uses_tokenizer: ClassVar[bool] = True  # False: records are not text (images); no tokenizer is built
    # Where a built-in tokenizer puts the special tokens a checkpoint's would add (data/framed.py):
    # "encoder" [BOS] A [EOS] (B [EOS]) as BERT, "seq2seq" A [EOS] as T5, "decoder" [BOS] A as Llama.
    framing: ClassVar[str] = "encoder"
    # `featurize` returns a list of examples per record (QA: one per window of the context).
    fans_out: ClassVar[bool] = False
    # Batch entries padded along axis 1 that evaluation may regroup by length and trim (the first
    # gives the length: its non-zero entries); () = fixed shapes (`data.pipeline.length_sorted`).
    trim_keys: ClassVar[tuple[str, ...]] = ()
    # Prediction-based end-of-run metrics (`evaluate(predictor, records, settings)`); None: the loss
    # evaluation (loss, accuracy, perplexity of the targets) is the task's metric.
    evaluate: ClassVar[Any] = None

    # --- derived from `fields`

    @property
    def needs(self) -> tuple[str, ...]:
        """Batch entries the model and the loss read."""
        return tuple(f.name for f in self.fields)

    def batch_names(self) -> tuple[str, ...]:
        """Every entry of a batch: the fields and the segment ids / positions derived beside them."""
        names = []
        for f in self.fields:
            names.append(f.name)
            if f.segments is not None:
                names += f.derived()
        return tuple(names)

    def pad(self, ex: dict, src_len: int, tgt_len: int) -> dict:
        """One example -> one fixed-shape row (tokens padded with 0; segment ids and positions derived)."""
        row = {}
        for f in self.fields:
            x = np.asarray(ex[f.name], f.dtype)
            if isinstance(f.length, str):
                n = f.size(src_len, tgt_len)[0]
                row[f.name] = pad_to(x, n)
                if f.segments is not None:
                    seg, pos = f.derived()
                    row[seg] = pad_to(np.ones(len(x), np.int32), n)
                    row[pos] = pad_to(np.arange(len(x), dtype=np.int32), n)
            else:
                row[f.name] = x
        return row

    def pack_lengths(self, src_len: int, tgt_len: int) -> dict[str, int]:
        """Grain's packer lengths: every token row."""
        return {f.name: f.size(src_len, tgt_len)[0] for f in self.fields if isinstance(f.length, str)}

    def unpack_names(self) -> dict[str, str]:
        """Grain's packer names -> ours (it names segment ids `<field>_segment_ids`)."""
        names = {f.name: f.name for f in self.fields}
        for f in self.fields:
            if f.segments is not None:
                seg, pos = f.derived()
                names[f"{f.name}_segment_ids"], names[f"{f.name}_positions"] = seg, pos
        return names

    def batch_shapes(self, batch: int, src_len: int, tgt_len: int) -> dict:
        shapes = {}
        for f in self.fields:
            shapes[f.name] = _shape((batch, *f.size(src_len, tgt_len)), f.dtype)
            if f.segments is not None:
                shapes.update({k: _shape((batch, *f.size(src_len, tgt_len)), np.int32) for k in f.derived()})
        return shapes

    def model_inputs(self, batch) -> tuple[tuple, dict]:
        """(positional, keyword) inputs of the model: the "arg" fields in order; the "kwarg" fields
        and derived segment ids / positions present in the batch by name."""
        args = tuple(batch[f.name] for f in self.fields if f.role == "arg")
        kwargs = {f.name: batch[f.name] for f in self.fields if f.role == "kwarg" and f.name in batch}
        for f in self.fields:
            if f.segments is not None:
                kwargs.update({k: batch[k] for k in f.derived() if k in batch})
        return args, kwargs

    # --- per task (defaults)

    def model_class(self):
        from transformer_jax import model

        return {"transformer": model.Transformer, "encoder_classifier": model.EncoderClassifier,
                "masked_lm": model.MaskedLM, "decoder_lm": model.DecoderLM}[self.model_type]

    def make_model(self, cfg):
        """The model this task trains, from a TransformerConfig (the experiment's `build_model`)."""
        return self.model_class()(cfg)

    def with_options(self, **options):
        """The task with model options from the experiment config (`config.vit` for image tasks);
        text tasks take none."""
        if options:
            raise ValueError(f"{', '.join(sorted(options))}: options for image tasks (config.vit); "
                             f"a {self.name} task takes none")
        return self

    def augment(self, tokenizer):
        """A seeded per-example transform (Grain `random_map`) applied after `featurize`, or None."""
        return None

    def for_model(self, cfg) -> "Task":
        """The task as the decided model reads it (`cfg`, its TransformerConfig); the same by default."""
        return self


class TokenTypes:
    """A mixin of the encoder tasks that read pairs: their `token_types` field reaches the model only
    when it has token-type embeddings (BERT, ALBERT; not DistilBERT, nor a workdir pretrained without
    them, `type_vocab_size=0`). Subclasses list `fields` with it as `_fields` and have a dataclass
    field `token_types: bool = True`."""

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self._fields if self.token_types or f.name != "token_types")

    def for_model(self, cfg):
        return self if cfg.type_vocab_size or not self.token_types else dataclasses.replace(self, token_types=False)


def token_weights(targets):
    import jax.numpy as jnp

    return (targets > 0).astype(jnp.float32)
