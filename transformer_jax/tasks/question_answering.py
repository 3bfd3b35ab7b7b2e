"""Extractive question answering (SQuAD; Rajpurkar et al. 2016): the answer is a span of the
context, found by start and end logits over its tokens (a `QuestionAnswering` encoder).

Question and context go in as a pair, the context cut into windows of `max_length` tokens that
overlap by `doc_stride` (`truncation="only_second"`, `return_overflowing_tokens=True`). Training
reads every window as an example, as the reference library's `run_qa.py` does: a window that holds
the whole answer points at its tokens, any other at [CLS] (index 0, start = end = 0), so the model
also learns where the answer is not. Evaluation and prediction read every window, and the best span
over all of them (n-best start and end logits, at most `max_answer_len` tokens, inside the context) is
mapped back to characters by the offsets. Scores are SQuAD v1.1's exact match and F1 (0-100).

Batch: inputs, token_types, segment_ids, positions [B, S] int32; start_positions, end_positions
[B] int32. Records: {"question", "context": str, "answers": {"text": [...], "answer_start": [...]},
"id": str (optional)}.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from transformer_jax.data import qa
from transformer_jax.tasks.base import Field, Task, TokenTypes


def windows(tokenizer, records, max_length: int, stride: int) -> dict:
    """The tokenizer's overflow windows of every record's (question, context): lists per window of
    input_ids, token_type_ids, offset_mapping, sequence_ids, and overflow_to_sample_mapping."""
    return tokenizer([r["question"] for r in records], [r["context"] for r in records], truncation="only_second",
                     max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)


def _example(enc, f: int, start: int = 0, end: int = 0) -> dict:
    """Window `f` as the task's arrays (its real tokens; padding is the layout's)."""
    ids = np.asarray(enc["input_ids"][f], np.int32)
    types = np.asarray(enc["token_type_ids"][f], np.int32) if "token_type_ids" in enc else np.zeros_like(ids)
    real = int(np.asarray(enc["attention_mask"][f]).sum()) if "attention_mask" in enc else len(ids)
    return {"inputs": ids[:real], "token_types": types[:real], "start_positions": np.int32(start),
            "end_positions": np.int32(end)}


@dataclasses.dataclass(frozen=True)
class QuestionAnswering(TokenTypes, Task):
    doc_stride: int = 32
    n_best: int = 20
    max_answer_len: int = 30
    token_types: bool = True
    name: ClassVar[str] = "question answering"
    model_type: ClassVar[str] = "question_answering"
    head: ClassVar[str] = "question_answering"
    roles: ClassVar[tuple[str, ...]] = ("question", "context", "answers")
    optional_roles: ClassVar[tuple[str, ...]] = ("id",)
    predict_roles: ClassVar[tuple[str, ...]] = ("question", "context")
    predict_optional: ClassVar[tuple[str, ...]] = ("id",)
    label_role: ClassVar[str | None] = None
    labels: ClassVar[None] = None
    num_labels: ClassVar[int] = 2  # the head's outputs, start and end: the reference's num_labels for QA
    unit: ClassVar[str] = "examples"
    packable: ClassVar[bool] = False
    fans_out: ClassVar[bool] = True  # one training example per window
    _fields: ClassVar[tuple[Field, ...]] = (Field("inputs", "src", segments=""),
                                            Field("token_types", "src", role="kwarg"),
                                            Field("start_positions", None, role="target"),
                                            Field("end_positions", None, role="target"))

    def model_class(self):
        from transformer_jax.model import QuestionAnswering as Model

        return Model

    def featurize(self, record, fz) -> list[dict]:
        """Every window of the record's context, with the answer's tokens in it or [CLS] (0, 0)."""
        enc = windows(fz.tokenizer, [record], fz.max_src_len, self.doc_stride)
        n = len(enc["input_ids"])
        answers = record.get("answers") or {"text": [], "answer_start": []}
        starts, ends = qa.train_positions(enc["offset_mapping"], enc["sequence_ids"], [0] * n, [answers])
        return [_example(enc, f, int(starts[f]), int(ends[f])) for f in range(n)]

    def targets_and_weights(self, batch):
        import jax.numpy as jnp

        return batch["start_positions"], (batch["segment_ids"][:, 0] > 0).astype(jnp.float32)

    def loss_sums(self, outputs, batch, cross_entropy):
        """The mean of the start and end cross-entropies (Devlin et al. 2019, §4.2)."""
        start_logits, end_logits = outputs  # [B, S] each
        _, weights = self.targets_and_weights(batch)
        a = cross_entropy(start_logits, batch["start_positions"], weights)
        b = cross_entropy(end_logits, batch["end_positions"], weights)
        return {k: (a[k] + b[k]) / 2 if k != "weight" else a[k] for k in a}

    def text_features(self) -> tuple[str, ...]:
        return ("question", "context")

    def answers(self, predictor, records, settings) -> list[dict]:
        """The best span of each record over its windows: {"answer", "start", "end", "score"}
        (characters of its context; data/qa.py's n-best post-processing)."""
        from transformer_jax.tasks.predictor import run_model

        if not records:
            return []
        enc = windows(predictor.tokenizer, records, settings.max_src_len, self.doc_stride)
        examples = [_example(enc, f) for f in range(len(enc["input_ids"]))]
        starts, ends = [], []
        for s, e in run_model(predictor, self, examples, settings):
            starts.append(s)
            ends.append(e)
        best = qa.best_spans(np.concatenate(starts), np.concatenate(ends), enc["offset_mapping"], enc["sequence_ids"],
                             enc["overflow_to_sample_mapping"], [r["context"] for r in records], n_best=self.n_best,
                             max_answer_length=self.max_answer_len)
        return [{"answer": b["text"], "start": b["start"], "end": b["end"], "score": b["score"]} for b in best]

    def evaluate(self, predictor, records, settings) -> dict:
        from transformer_jax.data import metrics

        predicted = [a["answer"] for a in self.answers(predictor, records, settings)]
        return {"examples": len(records), **metrics.squad(predicted, [r["answers"]["text"] for r in records])}

    def predict(self, predictor, records, settings) -> list[dict]:
        return self.answers(predictor, records, settings)
