"""Token classification (named-entity recognition): one tag per word, a `TokenClassifier` encoder.

Words are split into sub-words by the checkpoint's tokenizer (`is_split_into_words=True`); the first
sub-word of each word carries the word's tag and the others are masked out of the loss (Devlin et
al. 2019, §5.3). Scores are seqeval's entity-level precision, recall and F1 over the word tags.

Batch: inputs, token_types, segment_ids, positions, labels [B, S] int32; label_weights [B, S]
float32 (1 at first sub-words). Records: {"tokens": list[str], "tags": list[int]} (tag ids in
`labels` order); predict also reads {"text": str}, split on whitespace. Alignment, per-word
predictions and entity chunking are data/ner.py's.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from transformer_jax.data import ner
from transformer_jax.tasks.base import Field, Task, TokenTypes


@dataclasses.dataclass(frozen=True)
class TokenClassification(TokenTypes, Task):
    labels: tuple[str, ...] = ("O",)
    token_types: bool = True
    name: ClassVar[str] = "token classification"
    model_type: ClassVar[str] = "token_classifier"
    head: ClassVar[str] = "token_classification"
    roles: ClassVar[tuple[str, ...]] = ("tokens", "tags")
    optional_roles: ClassVar[tuple[str, ...]] = ()
    label_role: ClassVar[str] = "tags"
    predict_roles: ClassVar[tuple[str, ...]] = ()
    predict_optional: ClassVar[tuple[str, ...]] = ("text", "tokens")
    unit: ClassVar[str] = "examples"
    packable: ClassVar[bool] = False
    _fields: ClassVar[tuple[Field, ...]] = (Field("inputs", "src", segments=""),
                                            Field("token_types", "src", role="kwarg"),
                                            Field("labels", "src", role="target"),
                                            Field("label_weights", "src", np.float32, role="target"))

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def model_class(self):
        from transformer_jax.model import TokenClassifier

        return TokenClassifier

    def featurize(self, record, fz) -> dict | None:
        words = list(record["tokens"])
        if not words:
            return None
        enc = fz.tokenizer([words], is_split_into_words=True, truncation=True, max_length=fz.max_src_len)
        ids = np.asarray(enc["input_ids"][0], np.int32)
        types = np.asarray(enc["token_type_ids"][0], np.int32) if "token_type_ids" in enc else np.zeros_like(ids)
        aligned = ner.align_labels(enc["word_ids"], [record.get("tags") or [0] * len(words)])[0]  # data/ner.py
        weights = (aligned != ner.IGNORE).astype(np.float32)
        return {"inputs": ids, "token_types": types, "labels": np.where(weights > 0, aligned, 0).astype(np.int32),
                "label_weights": weights, "word_ids": enc["word_ids"][0]}

    def targets_and_weights(self, batch):
        return batch["labels"], batch["label_weights"]

    def text_features(self) -> tuple[str, ...]:
        return ("tokens",)

    def word_tags(self, predictor, records, settings) -> list[list[str]]:
        """The predicted tag of every word (words cut off by max_length get "O")."""
        from transformer_jax.tasks.predictor import featurized, run_model

        examples = featurized(self, predictor.tokenizer, records, settings)
        if not examples:
            return []
        predicted = np.concatenate([x.argmax(-1) for x in run_model(predictor, self, examples, settings)])  # [N, S]
        by_word = ner.word_predictions([ex["word_ids"] for ex in examples], predicted)
        return [[self.labels[words.get(w, 0)] if w in words else "O" for w in range(len(r["tokens"]))]
                for words, r in zip(by_word, records)]

    def evaluate(self, predictor, records, settings) -> dict:
        """seqeval's entity-level precision, recall, F1 (and token accuracy) over the words."""
        from transformer_jax.data import metrics

        predicted = self.word_tags(predictor, records, settings)
        gold = [[self.labels[t] for t in r["tags"]] for r in records]
        return {"examples": len(records), **metrics.entity_scores(gold, predicted)}

    def predict(self, predictor, records, settings) -> list[dict]:
        """Entity spans with character offsets into the record's text (or its tokens joined by spaces)."""
        texts = [r["text"] if r.get("text") is not None else " ".join(r["tokens"]) for r in records]
        split = [ner.split_words(t) for t in texts]
        tags = self.word_tags(predictor, [{"tokens": words} for words, _ in split], settings)
        return [{"tokens": words, "tags": row, "entities": ner.entity_spans(row, offsets, text)}
                for text, (words, offsets), row in zip(texts, split, tags)]
