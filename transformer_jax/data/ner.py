"""Token classification over words: word labels onto sub-word tokens, and back to entity spans.

A tokenizer called with ``is_split_into_words=True`` gives each token the index of the word it
came from (``word_ids``, None at special tokens and padding). As the reference library's
``run_ner.py`` (``tokenize_and_align_labels``), the first sub-word of a word gets the word's label
and the others are ignored (-100), or with ``label_all_tokens`` they get it too (a B- label
becoming its I- label). Predictions come back per word from each word's first sub-word, and BIO
tags become entity spans with the CoNLL script's chunking (the rules seqeval's default mode uses).

Returns:
  ``align_labels(word_ids, word_labels, ...) -> int32 [F, L]`` labels per token, ``ignore`` elsewhere.
  ``b_to_i(names) -> list[int]``: for each label id, the id of its I- label (itself when none).
  ``word_predictions(word_ids, token_predictions) -> list[dict[int, int]]`` per row: word -> prediction.
  ``split_words(text) -> (words, offsets)``: whitespace words and their character spans.
  ``entity_spans(tags, offsets=None, text=None) -> list[dict]``: ``{"entity", "start", "end",
    "word_start", "word_end"}`` (words [word_start, word_end); characters [start, end) when
    ``offsets`` of the words are given) and ``"text"`` when ``text`` is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

IGNORE = -100


def b_to_i(names: Sequence[str]) -> list[int]:
    """Label id -> the id of the matching I- label (B-PER -> I-PER); other ids map to themselves."""
    index = {n: i for i, n in enumerate(names)}
    return [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(names)]


def align_labels(
    word_ids: Sequence[Sequence[int | None]],
    word_labels: Sequence[Sequence[int]],
    *,
    sample_mapping: Sequence[int] | None = None,
    label_all_tokens: bool = False,
    b_to_i_ids: Sequence[int] | None = None,
    length: int | None = None,
    ignore: int = IGNORE,
) -> np.ndarray:
    """Token labels [F, L]: the word's label on its first sub-word, ``ignore`` on special tokens,
    padding and the other sub-words (or, with ``label_all_tokens``, the word's label mapped by
    ``b_to_i_ids`` on them). ``sample_mapping`` gives each row's example when rows are overflow
    windows; ``length`` pads the rows (default: the longest)."""
    width = length if length is not None else max((len(w) for w in word_ids), default=0)
    out = np.full((len(word_ids), width), ignore, np.int32)
    for r, ids in enumerate(word_ids):
        labels = word_labels[r if sample_mapping is None else int(sample_mapping[r])]
        previous = None
        for t, w in enumerate(ids[:width]):
            if w is None:
                previous = None
                continue
            if w >= len(labels):
                raise ValueError(f"row {r}: token {t} belongs to word {w}, but the example has {len(labels)} labels")
            if w != previous:
                out[r, t] = labels[w]
            elif label_all_tokens:
                out[r, t] = labels[w] if b_to_i_ids is None else b_to_i_ids[labels[w]]
            previous = w
    return out


def word_predictions(word_ids: Sequence[Sequence[int | None]], token_predictions) -> list[dict[int, int]]:
    """Per row, {word index: the prediction at the word's first sub-word}. Words cut off by
    truncation are absent; rows that are windows of one example can be merged (first seen wins)."""
    out = []
    for ids, preds in zip(word_ids, token_predictions):
        words: dict[int, int] = {}
        for w, p in zip(ids, np.asarray(preds).tolist()):
            if w is not None and w not in words:
                words[w] = int(p)
        out.append(words)
    return out


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace-separated words of ``text`` and their character spans [start, end)."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    return [text[s:e] for s, e in spans], spans


def _split(tag: str) -> tuple[str, str]:
    if tag in ("O", "", None):
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return (prefix, kind) if kind else ("B", prefix)  # a bare "PER" starts an entity


def entity_spans(tags: Sequence[str], offsets: Sequence[tuple[int, int]] | None = None,
                 text: str | None = None) -> list[dict]:
    """Entities in a BIO (IOB1/IOB2, also E-/S-) tag sequence, chunked as the CoNLL script does: an
    entity starts at B-/S-, or at I-/E- after O or another type; it ends before O, B-, S- or a
    different type, or after E-/S-."""
    spans, start, kind = [], None, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, k = _split(tag)
        ends = start is not None and (prefix in ("O", "B", "S") or k != kind)
        if ends:
            spans.append((kind, start, i))
            start = None
        if prefix != "O" and start is None:
            start, kind = i, k
        if prefix in ("E", "S") and start is not None:
            spans.append((kind, start, i + 1))
            start = None
    out = []
    for kind, a, b in spans:
        span = {"entity": kind, "word_start": a, "word_end": b}
        if offsets is not None:
            span["start"], span["end"] = int(offsets[a][0]), int(offsets[b - 1][1])
            if text is not None:
                span["text"] = text[span["start"]:span["end"]]
        out.append(span)
    return out
