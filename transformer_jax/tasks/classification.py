"""Sequence classification: one label per sequence, an `EncoderClassifier`. Not packable.

Batch: inputs, segment_ids, positions [B, S] int32; label [B] int32.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from transformer_jax.tasks.base import Field, Task, TokenTypes


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """`text` and `label` name the record's features; the label is a class index."""

    text: str = "text"
    label: str = "label"
    name: ClassVar[str] = "classification"
    model_type: ClassVar[str] = "encoder_classifier"
    fields: ClassVar[tuple[Field, ...]] = (Field("inputs", "src", segments=""),
                                           Field("label", None, role="target"))
    unit: ClassVar[str] = "examples"
    packable: ClassVar[bool] = False
    trim_keys: ClassVar[tuple[str, ...]] = ("segment_ids", "inputs", "positions")

    def featurize(self, record, fz) -> dict | None:
        text = fz.text(record, self.text)
        if not text:  # nothing to attend to: drop rather than feed an empty row
            return None
        ids = fz.ids(text, fz.max_src_len)
        return None if ids is None else {"inputs": np.asarray(ids, np.int32), "label": np.int32(record[self.label])}

    def targets_and_weights(self, batch):
        import jax.numpy as jnp

        # all-padding rows (an eval split's last batch is topped up with them) weigh 0
        real = jnp.any(batch["inputs"] != 0, axis=-1).astype(jnp.float32)
        return batch["label"], batch.get("weights", real)

    def text_features(self) -> tuple[str, ...]:
        return (self.text,)


@dataclasses.dataclass(frozen=True)
class SequenceClassification(TokenTypes, Task):
    """Fine-tuning a pretrained encoder on the user's records (Devlin et al. 2019, §4.1): single texts
    or pairs (`[CLS] A [SEP] B [SEP]`, token types 0/1), through the checkpoint's own tokenizer
    (`tokenizer(text, text_pair, truncation=True, max_length=S)`). `labels`: the label names in id
    order; None is regression with one output (mean squared error; Pearson/Spearman).

    Batch: inputs, token_types, segment_ids, positions [B, S] int32; label [B] int32 (float32 for
    regression). Records: {"text": str, "text_pair": str (optional), "label": id or number}.
    """

    labels: tuple[str, ...] | None = ("0", "1")
    token_types: bool = True
    name: ClassVar[str] = "sequence classification"
    model_type: ClassVar[str] = "encoder_classifier"
    head: ClassVar[str] = "sequence_classification"
    roles: ClassVar[tuple[str, ...]] = ("text", "label")
    optional_roles: ClassVar[tuple[str, ...]] = ("text_pair",)
    predict_roles: ClassVar[tuple[str, ...]] = ("text",)  # what `predict` reads of its input records
    predict_optional: ClassVar[tuple[str, ...]] = ("text_pair",)
    unit: ClassVar[str] = "examples"
    packable: ClassVar[bool] = False

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def _fields(self) -> tuple[Field, ...]:
        label = Field("label", None, np.float32 if self.labels is None else np.int32, role="target")
        return (Field("inputs", "src", segments=""), Field("token_types", "src", role="kwarg"), label)

    def featurize(self, record, fz) -> dict | None:
        pair = record.get("text_pair")
        enc = fz.tokenizer([record["text"]], None if pair is None else [pair], truncation=True,
                           max_length=fz.max_src_len)  # a batch of one
        ids = np.asarray(enc["input_ids"][0], np.int32)
        types = np.asarray(enc["token_type_ids"][0], np.int32) if "token_type_ids" in enc else np.zeros_like(ids)
        label = record.get("label", 0)
        return {"inputs": ids, "token_types": types, "label": np.asarray(label, self._fields[-1].dtype)}

    def targets_and_weights(self, batch):
        import jax.numpy as jnp

        real = (batch["segment_ids"][:, 0] > 0).astype(jnp.float32)  # fill rows of an eval split weigh 0
        return batch["label"], real

    def loss_sums(self, outputs, batch, cross_entropy):
        """Cross-entropy over the labels, or the squared error of the one output (regression)."""
        targets, weights = self.targets_and_weights(batch)
        if self.labels is not None:
            return cross_entropy(outputs, targets, weights)
        import jax.numpy as jnp

        err = jnp.sum(weights * (outputs[:, 0] - targets) ** 2)
        return {"loss": err, "nll": err, "correct": jnp.zeros(()), "weight": jnp.sum(weights)}

    def text_features(self) -> tuple[str, ...]:
        return ("text", "text_pair")

    def evaluate(self, predictor, records, settings) -> dict:
        """accuracy and macro-F1 of the argmax, or Pearson/Spearman of the regression output."""
        from transformer_jax.data import metrics

        outputs = self.predict_logits(predictor, records, settings)
        gold = np.asarray([r["label"] for r in records])
        if self.labels is None:
            return {"examples": len(records), **metrics.pearson_spearman(outputs[:, 0], gold)}
        pred = outputs.argmax(-1)
        return {"examples": len(records), "accuracy": metrics.accuracy(pred, gold), "f1": metrics.macro_f1(pred, gold)}

    def predict_logits(self, predictor, records, settings) -> np.ndarray:
        from transformer_jax.tasks.predictor import featurized, run_model

        return np.concatenate(list(run_model(predictor, self, featurized(self, predictor.tokenizer, records, settings),
                                             settings))) if records else np.zeros((0, self.num_labels))

    def predict(self, predictor, records, settings) -> list[dict]:
        """One line per record: the label and the softmax scores by label (regression: the score)."""
        outputs = self.predict_logits(predictor, records, settings)
        if self.labels is None:
            return [{"score": float(o[0])} for o in outputs]
        z = np.exp(outputs - outputs.max(-1, keepdims=True))
        probs = z / z.sum(-1, keepdims=True)
        return [{"label": self.labels[int(p.argmax())], "scores": dict(zip(self.labels, map(float, p)))}
                for p in probs]
