"""Extractive question answering from a tokenizer's outputs: training targets and answer spans.

Works on what a fast tokenizer returns for ``tok(questions, contexts, truncation="only_second",
max_length=L, stride=K, return_overflowing_tokens=True, return_offsets_mapping=True)``: each
example becomes one or more overlapping windows ("features") of its context, and

  offset_mapping [F, L, 2]   character span of each token in its own text
  sequence_ids   [F][L]      0 question, 1 context, None special tokens and padding
  overflow_to_sample_mapping [F]  the example each feature came from

as the reference library's ``run_qa.py`` (``prepare_train_features``) and ``utils_qa.py``
(``postprocess_qa_predictions``) use them. Pure NumPy / Python; no tokenizer is called here.

Returns:
  ``train_positions(...) -> (start [F] int32, end [F] int32)``: the answer's first and last token
    in each feature, or (cls_index, cls_index) when the answer is not wholly inside the window.
  ``context_offsets(...) -> list[list[tuple[int, int] | None]]``: offsets with None outside the context.
  ``best_spans(...) -> list[dict]`` per example: ``{"text", "start", "end", "score", "n_best"}``
    (character offsets into the context; score = start logit + end logit; ``n_best``: the best
    candidates, each with ``text``, ``start``, ``end``, ``score``, ``probability`` (softmax over them)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _rows(x) -> list:
    return [list(r) for r in x]


def train_positions(
    offset_mapping,
    sequence_ids: Sequence[Sequence[int | None]],
    sample_mapping: Sequence[int],
    answers: Sequence[Mapping[str, Sequence]],
    *,
    cls_index: int | Sequence[int] = 0,
    context_id: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Start/end token of the first gold answer in each feature (``prepare_train_features``).

    Args:
      offset_mapping: [F, L, 2] character offsets.
      sequence_ids: [F][L]; the context's tokens carry ``context_id`` (1 when the question comes
        first, 0 when the context does, for left-padding models).
      sample_mapping: [F] example of each feature.
      answers: per example ``{"text": [...], "answer_start": [...]}``; no answer -> CLS.
      cls_index: the CLS token's index (per feature or one for all): the target when the answer
        is not inside a feature's window.
    """
    offsets, seq = _rows(offset_mapping), _rows(sequence_ids)
    cls = np.broadcast_to(np.asarray(cls_index, np.int32), (len(offsets),))
    starts, ends = np.array(cls), np.array(cls)
    for f, (off, ids) in enumerate(zip(offsets, seq)):
        ans = answers[int(sample_mapping[f])]
        if not len(ans["answer_start"]):
            continue
        start_char = int(ans["answer_start"][0])
        end_char = start_char + len(ans["text"][0])
        ctx = [i for i, s in enumerate(ids) if s == context_id]
        if not ctx:
            continue
        first, last = ctx[0], ctx[-1]
        if not (off[first][0] <= start_char and off[last][1] >= end_char):
            continue  # the answer is not wholly inside this window
        t = first
        while t <= last and off[t][0] <= start_char:
            t += 1
        starts[f] = t - 1
        t = last
        while t >= first and off[t][1] >= end_char:
            t -= 1
        ends[f] = t + 1
    return starts.astype(np.int32), ends.astype(np.int32)


def context_offsets(offset_mapping, sequence_ids, *, context_id: int = 1) -> list[list[tuple[int, int] | None]]:
    """Offsets of the context's tokens, None for the question, special tokens and padding
    (``prepare_validation_features``): only context tokens can start or end an answer."""
    return [[(int(o[0]), int(o[1])) if s == context_id else None for o, s in zip(off, ids)]
            for off, ids in zip(_rows(offset_mapping), _rows(sequence_ids))]


def best_spans(
    start_logits,
    end_logits,
    offset_mapping,
    sequence_ids,
    sample_mapping: Sequence[int],
    contexts: Sequence[str],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    context_id: int = 1,
) -> list[dict]:
    """The best answer span of each example over all its windows (``postprocess_qa_predictions``
    for SQuAD v1.1: there is always an answer).

    For each feature, the ``n_best`` highest start and end logits are paired; a pair counts when
    both tokens are in the context, end >= start and the span has at most ``max_answer_length``
    tokens. Candidates from all of an example's windows are ranked by start + end logit. Overlapping
    windows see the same span twice; both count as candidates and the higher score wins.

    Args:
      start_logits, end_logits: [F, L] floats.
      offset_mapping, sequence_ids, sample_mapping: the tokenizer's outputs, as in the module doc.
      contexts: the context string of each example (``sample_mapping`` indexes it).
    """
    start_logits, end_logits = np.asarray(start_logits, np.float64), np.asarray(end_logits, np.float64)
    offsets = context_offsets(offset_mapping, sequence_ids, context_id=context_id)
    candidates: list[list[dict]] = [[] for _ in contexts]
    for f, off in enumerate(offsets):
        s_log, e_log = start_logits[f], end_logits[f]
        length = min(len(off), len(s_log))
        top_s = np.argsort(s_log[:length])[::-1][:n_best]
        top_e = np.argsort(e_log[:length])[::-1][:n_best]
        example = int(sample_mapping[f])
        for s in top_s.tolist():
            if off[s] is None:
                continue
            for e in top_e.tolist():
                if off[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                candidates[example].append({"start": off[s][0], "end": off[e][1], "score": float(s_log[s] + e_log[e])})
    out = []
    for context, cands in zip(contexts, candidates):
        cands = sorted(cands, key=lambda c: -c["score"])[:n_best]
        if not cands:  # no window had a valid span (the reference answers "empty" with score 0)
            out.append({"text": "", "start": 0, "end": 0, "score": 0.0, "n_best": []})
            continue
        scores = np.array([c["score"] for c in cands])
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        n_best_list = [dict(c, text=context[c["start"]:c["end"]], probability=float(p)) for c, p in zip(cands, probs)]
        best = n_best_list[0]
        out.append({"text": best["text"], "start": best["start"], "end": best["end"], "score": best["score"],
                    "n_best": n_best_list})
    return out
