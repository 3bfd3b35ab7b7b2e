"""transformer_jax.data.metrics against hand-computed values, the packages' own examples and
scikit-learn / NumPy references."""

import numpy as np
import pytest

from transformer_jax.data import metrics as M


def test_macro_f1_by_hand_and_against_scikit_learn():
    # 2TP/(2TP+FP+FN): class 0: TP 1, FP 0, FN 2 -> 2/4; class 1: TP 1, FP 2, FN 0 -> 2/4; class 2: 1
    assert M.macro_f1([0, 1, 1, 1, 2], [0, 0, 0, 1, 2]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        labels, preds = rng.integers(0, 4, 40), rng.integers(0, 5, 40)  # class 4 only predicted
        assert M.macro_f1(preds, labels) == pytest.approx(f1_score(labels, preds, average="macro"), rel=1e-12)


def test_pearson_spearman_against_numpy():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([2.0, 4.0, 5.0, 4.5, 9.0])
    got = M.pearson_spearman(x, y)
    assert got["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    ranks_y = np.array([1, 2, 4, 3, 5.0])  # no ties: Spearman = Pearson of the ranks
    assert got["spearman"] == pytest.approx(np.corrcoef(np.arange(1, 6), ranks_y)[0, 1], rel=1e-12)
    assert M.pearson_spearman([1, 1, 1], [1, 2, 3]) == {"pearson": 0.0, "spearman": 0.0}


def test_entity_scores_seqeval_readme_example():
    ref = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    # gold entities MISC[3:6], PER[0:2]; predicted MISC[2:6] (wrong span), PER[0:2]: 1 of 2 each way;
    # tokens 2 and 3 differ: accuracy 8/10
    assert M.entity_scores(ref, pred) == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.8})


def test_entity_scores_count_types_and_spans():
    ref = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]]  # LOC typed wrong, an extra LOC
    s = M.entity_scores(ref, pred)
    assert s["precision"] == pytest.approx(2 / 4) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))


def test_squad_normalisation_and_max_over_gold_answers():
    assert M.normalize_answer("  The Eiffel   Tower! ") == "eiffel tower"
    assert M.normalize_answer("An apple, a pear") == "apple pear"
    # q1: exact after normalisation. q2: "in paris france" vs "Paris" -> P 1/3, R 1 -> F1 1/2;
    # vs "France, Europe" -> P 1/3, R 1/2 -> F1 2/5; the max is 1/2 and EM is 0.
    got = M.squad(["the Eiffel tower!", "in Paris France"], [["Eiffel Tower"], ["Paris", "France, Europe"]])
    assert got == pytest.approx({"exact_match": 50.0, "f1": 75.0})
    by_id = M.squad({"a": "Eiffel Tower"}, {"a": ["eiffel tower"], "b": ["x"]})  # b unanswered: scores 0
    assert by_id == pytest.approx({"exact_match": 50.0, "f1": 50.0})


def test_rouge_rouge_score_readme_example_by_hand():
    ref, pred = "The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."
    got = M.rouge([pred], [ref], use_stemmer=False)
    # unigrams: the×2 quick brown dog jumps = 6 shared, P 6/8, R 6/9; bigrams: "the quick", "quick
    # brown" = 2 shared of 7 and 8; LCS "the quick brown jumps the" = 5 of 8 and 9.
    assert got["rouge1"] == pytest.approx(100 * 2 * 6 / (8 + 9))
    assert got["rouge2"] == pytest.approx(100 * 2 * 2 / (7 + 8))
    assert got["rougeL"] == pytest.approx(100 * 2 * 5 / (8 + 9))
    assert got["rougeLsum"] == pytest.approx(got["rougeL"])  # one sentence each


def test_rouge_stems_and_averages():
    preds, refs = ["the cats are running", "a b"], ["the cat is run", "c d"]
    assert M.rouge(preds, refs)["rouge1"] == pytest.approx(100 * (0.75 + 0.0) / 2)  # the, cat, run of 4
    assert M.rouge(preds, refs, use_stemmer=False)["rouge1"] == pytest.approx(100 * 0.25 / 2)


def test_corpus_bleu_perfect_and_signature():
    score, sig = M.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert score == pytest.approx(100.0) and "tok:13a" in sig
