"""Evaluation metrics: corpus BLEU and chrF (sacrebleu), exact match, accuracy.

BLEU and chrF come from sacrebleu (Post, 2018, https://aclanthology.org/W18-6319)
so scores are comparable with published numbers; each returns sacrebleu's
signature string, which records tokenization and smoothing, for the log.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sacrebleu


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references; they must pair up")


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str = "13a"
) -> tuple[float, str]:
    """Corpus BLEU (0-100) against one reference per hypothesis, and its signature."""
    _check(hypotheses, references)
    metric = sacrebleu.metrics.BLEU(tokenize=tokenize)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), str(metric.get_signature())


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus chrF (0-100) and its signature."""
    _check(hypotheses, references)
    metric = sacrebleu.metrics.CHRF()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), str(metric.get_signature())


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction (0-1) of hypotheses equal to their reference after stripping whitespace."""
    _check(hypotheses, references)
    if not hypotheses:
        return 0.0
    return sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(hypotheses)


def accuracy(predictions, labels, weights=None) -> float:
    """Weighted fraction of correct labels; ``weights`` masks padding rows."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions shape {predictions.shape} != labels shape {labels.shape}")
    w = np.ones(labels.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    total = w.sum()
    return float(((predictions == labels) * w).sum() / total) if total else 0.0
