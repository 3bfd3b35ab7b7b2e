"""Evaluation metrics, each computed the way the published numbers are.

  corpus_bleu, corpus_chrf -> (score 0-100, signature)  sacrebleu (Post, 2018,
                              https://aclanthology.org/W18-6319); the signature records tokenization
  exact_match -> float 0-1       stripped string equality
  accuracy -> float 0-1          weighted, for padded label arrays
  macro_f1 -> float 0-1          unweighted mean of per-class F1 over the classes in labels or predictions
  pearson_spearman -> {"pearson", "spearman"}   regression (GLUE STS-B's pair), scipy.stats
  entity_scores -> {"precision", "recall", "f1", "accuracy"}  0-1, entity-level (CoNLL) from
                              seqeval, as the reference library's run_ner reports; accuracy is per token
  squad -> {"exact_match", "f1"}  0-100, the official SQuAD v1.1 evaluation script's
                              normalisation and max over the gold answers
  rouge -> {"rouge1", "rouge2", "rougeL", "rougeLsum"}  0-100 mean F-measures from rouge-score
                              (Lin, 2004), Porter stemming as the reference library's summarization
                              example; rougeLsum over sentences split at . ! ?
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

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


def macro_f1(predictions, labels) -> float:
    """Mean over classes of 2·TP / (2·TP + FP + FN), classes = those in labels or predictions
    (scikit-learn's ``f1_score(average="macro")``)."""
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions shape {predictions.shape} != labels shape {labels.shape}")
    classes = np.union1d(predictions, labels)
    if not len(classes):
        return 0.0
    f1s = []
    for c in classes:
        tp = np.sum((predictions == c) & (labels == c))
        wrong = np.sum(predictions != labels, where=(predictions == c) | (labels == c))
        f1s.append(2 * tp / (2 * tp + wrong))
    return float(np.mean(f1s))


def pearson_spearman(predictions, labels) -> dict[str, float]:
    """Pearson's r and Spearman's rho between predicted and gold scores."""
    from scipy import stats

    predictions = np.asarray(predictions, np.float64).ravel()
    labels = np.asarray(labels, np.float64).ravel()
    if predictions.shape != labels.shape or len(labels) < 2:
        raise ValueError(f"need two equally long score lists of 2 or more, got {predictions.shape} and {labels.shape}")
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:  # undefined: report no correlation, not NaN
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": float(stats.pearsonr(predictions, labels)[0]),
            "spearman": float(stats.spearmanr(predictions, labels)[0])}


def entity_scores(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (an entity counts when its type and span match) over
    BIO/IOBES tag sequences, and per-token accuracy; seqeval's default (CoNLL-2000 script) mode."""
    from seqeval import metrics as sm

    references, predictions = [list(r) for r in references], [list(p) for p in predictions]
    if len(references) != len(predictions) or any(len(r) != len(p) for r, p in zip(references, predictions)):
        raise ValueError("references and predictions must have the same sentences and lengths")
    return {
        "precision": float(sm.precision_score(references, predictions, zero_division=0)),
        "recall": float(sm.recall_score(references, predictions, zero_division=0)),
        "f1": float(sm.f1_score(references, predictions, zero_division=0)),
        "accuracy": float(sm.accuracy_score(references, predictions)) if references else 0.0,
    }


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalisation: lower case, drop punctuation, articles and extra whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Mapping[str, str] | Sequence[str],
          references: Mapping[str, Sequence[str]] | Sequence[Sequence[str]]) -> dict[str, float]:
    """The official SQuAD v1.1 exact match and F1 (0-100): each prediction scored against every
    gold answer of its question, the best kept, averaged over the questions. By id (mappings; a
    question without a prediction scores 0, as in the script) or by position (sequences)."""
    if isinstance(references, Mapping):
        predictions = predictions if isinstance(predictions, Mapping) else dict(zip(references, predictions))
        pairs = [(predictions.get(k, ""), golds) for k, golds in references.items()]
    else:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} questions")
        pairs = list(zip(predictions, references))
    if not pairs:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, golds in pairs:
        golds = [golds] if isinstance(golds, str) else list(golds)
        em += max((normalize_answer(pred) == normalize_answer(g)) for g in golds) if golds else 0.0
        f1 += max(squad_f1(pred, g) for g in golds) if golds else 0.0
    return {"exact_match": 100.0 * em / len(pairs), "f1": 100.0 * f1 / len(pairs)}


def rouge(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures (0-100) of each prediction against its reference."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    kinds = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=use_stemmer)
    totals = dict.fromkeys(kinds, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(_sentences(ref), _sentences(pred))
        for k in kinds:
            totals[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: 100.0 * v / n for k, v in totals.items()}


def _sentences(text: str) -> str:
    """One sentence a line (rougeLsum's unit); the other ROUGE types ignore newlines."""
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)
