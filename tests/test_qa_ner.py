"""transformer_jax.data.qa and .ner on the outputs of a tiny fake fast tokenizer (words split into
4-character pieces, [CLS] question [SEP] context [SEP], overflow windows with a stride) that has
the reference library's output layout."""

import random

import numpy as np
import pytest

from transformer_jax.data import ner, qa

CLS, SEP, PAD = "[CLS]", "[SEP]", "[PAD]"


def _pieces(text):
    """(piece, (start, end), word) of each sub-word: whitespace words cut into 4-char pieces."""
    out = []
    for w, (s, e) in enumerate(ner.split_words(text)[1]):
        for a in range(s, e, 4):
            out.append((text[a:min(a + 4, e)], (a, min(a + 4, e)), w))
    return out


def fake_qa_tokenize(questions, contexts, *, max_length, stride):
    """The reference's tok(q, c, truncation="only_second", max_length, stride,
    return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")."""
    feats = {"tokens": [], "offset_mapping": [], "sequence_ids": [], "overflow_to_sample_mapping": []}
    for i, (q, c) in enumerate(zip(questions, contexts)):
        qp, cp = _pieces(q), _pieces(c)
        room = max_length - len(qp) - 3
        start = 0
        while True:
            window = cp[start:start + room]
            toks = [CLS] + [p[0] for p in qp] + [SEP] + [p[0] for p in window] + [SEP]
            offs = [(0, 0)] + [p[1] for p in qp] + [(0, 0)] + [p[1] for p in window] + [(0, 0)]
            seq = [None] + [0] * len(qp) + [None] + [1] * len(window) + [None]
            pad = max_length - len(toks)
            feats["tokens"].append(toks + [PAD] * pad)
            feats["offset_mapping"].append(offs + [(0, 0)] * pad)
            feats["sequence_ids"].append(seq + [None] * pad)
            feats["overflow_to_sample_mapping"].append(i)
            if start + room >= len(cp):
                break
            start += room - stride
    feats["offset_mapping"] = np.asarray(feats["offset_mapping"], np.int32)
    return feats


CONTEXT = "The old tower stands in Paris beside the river Seine while tourists photograph everything"
QUESTION = "Where is it?"


@pytest.mark.parametrize("answer", ["Paris", "Seine", "tourists photograph", "ower"])
def test_train_positions_cover_the_answer_in_windows_that_hold_it(answer):
    start_char = CONTEXT.index(answer)
    end_char = start_char + len(answer)
    f = fake_qa_tokenize([QUESTION], [CONTEXT], max_length=14, stride=3)
    assert len(f["tokens"]) > 2  # several overlapping windows
    s, e = qa.train_positions(f["offset_mapping"], f["sequence_ids"], f["overflow_to_sample_mapping"],
                              [{"text": [answer], "answer_start": [start_char]}])
    hits = 0
    for k, (off, seq) in enumerate(zip(f["offset_mapping"], f["sequence_ids"])):
        ctx = [t for t, x in enumerate(seq) if x == 1]
        inside = off[ctx[0]][0] <= start_char and off[ctx[-1]][1] >= end_char
        if not inside:
            assert s[k] == e[k] == 0  # CLS
            continue
        hits += 1
        assert seq[s[k]] == seq[e[k]] == 1 and s[k] <= e[k]
        assert off[s[k]][0] <= start_char < off[s[k]][1]  # the token holding the answer's first character
        assert off[e[k]][0] < end_char <= off[e[k]][1]  # ... and its last
    assert hits >= 1


def test_train_positions_without_an_answer_point_at_cls():
    f = fake_qa_tokenize([QUESTION], [CONTEXT], max_length=40, stride=0)
    s, e = qa.train_positions(f["offset_mapping"], f["sequence_ids"], [0], [{"text": [], "answer_start": []}],
                              cls_index=5)
    assert s.tolist() == e.tolist() == [5]


def _logits(f, spans, rng):
    """Random logits around -50, then each (feature, start token, end token, value) sets both ends
    to about ``value``: any pairing with an unbumped token scores far below every bumped pair."""
    n, L = f["offset_mapping"].shape[:2]
    start, end = rng.normal(size=(n, L)) - 50, rng.normal(size=(n, L)) - 50
    for k, s, e, v in spans:
        start[k, s] += 50 + v
        end[k, e] += 50 + v
    return start, end


def test_best_spans_rank_valid_spans_over_all_windows():
    rng = np.random.default_rng(0)
    contexts = [CONTEXT, "Short context about Oslo"]
    f = fake_qa_tokenize([QUESTION, "What city?"], contexts, max_length=14, stride=3)
    sm = f["overflow_to_sample_mapping"]
    feats0 = [k for k, x in enumerate(sm) if x == 0]
    k0, k1 = feats0[0], feats0[-1]
    seq = f["sequence_ids"]
    ctx_k1 = [t for t, x in enumerate(seq[k1]) if x == 1]
    q_tok = seq[k0].index(0)
    oslo_feat = sm.index(1)
    oslo_tok = f["tokens"][oslo_feat].index("Oslo")
    start, end = _logits(f, [
        (k0, q_tok, q_tok, 40.0),                   # in the question: never an answer
        (k0, 0, 0, 30.0),                           # CLS: never an answer in v1.1
        (k1, ctx_k1[5], ctx_k1[0], 25.0),           # end before start
        (k1, ctx_k1[1], ctx_k1[3], 10.0),           # valid, in the last window
        (k0, seq[k0].index(1), seq[k0].index(1) + 1, 6.0),  # valid, lower
        (oslo_feat, oslo_tok, oslo_tok, 9.0),
    ], rng)
    out = qa.best_spans(start, end, f["offset_mapping"], seq, sm, contexts, n_best=5, max_answer_length=30)
    off = f["offset_mapping"][k1]
    a, b = int(off[ctx_k1[1]][0]), int(off[ctx_k1[3]][1])
    assert (out[0]["start"], out[0]["end"], out[0]["text"]) == (a, b, CONTEXT[a:b])
    assert out[0]["score"] == pytest.approx(start[k1, ctx_k1[1]] + end[k1, ctx_k1[3]])
    assert out[1]["text"] == "Oslo" and (out[1]["start"], out[1]["end"]) == (20, 24)
    for o in out:
        assert sum(c["probability"] for c in o["n_best"]) == pytest.approx(1.0)
        assert [c["score"] for c in o["n_best"]] == sorted((c["score"] for c in o["n_best"]), reverse=True)
    short = qa.best_spans(start, end, f["offset_mapping"], seq, sm, contexts, n_best=5, max_answer_length=2)
    assert short[0]["end"] - short[0]["start"] <= 8 and short[0]["text"] != out[0]["text"]  # 4-token span dropped


def test_best_spans_match_a_brute_force_search():
    rng = np.random.default_rng(1)
    f = fake_qa_tokenize([QUESTION], [CONTEXT], max_length=16, stride=4)
    start, end = _logits(f, [], rng)
    got = qa.best_spans(start, end, f["offset_mapping"], f["sequence_ids"], f["overflow_to_sample_mapping"],
                        [CONTEXT], n_best=64, max_answer_length=3)[0]
    best = max((start[k, s] + end[k, e], k, s, e) for k, seq in enumerate(f["sequence_ids"])
               for s in range(16) for e in range(16) if seq[s] == seq[e] == 1 and 0 <= e - s < 3)
    _, k, s, e = best
    assert (got["start"], got["end"]) == (f["offset_mapping"][k, s, 0], f["offset_mapping"][k, e, 1])


# ---------------------------------------------------------------------------- NER


def test_align_labels_first_subword_gets_the_label():
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    word_ids = [[None, 0, 1, 1, 1, 2, None, None], [None, 0, 0, None]]
    labels = [[1, 2, 0], [3]]
    got = ner.align_labels(word_ids, labels)
    assert got.tolist() == [[-100, 1, 2, -100, -100, 0, -100, -100], [-100, 3, -100, -100, -100, -100, -100, -100]]
    got = ner.align_labels(word_ids, [[1, 0, 0], [3]], label_all_tokens=True, b_to_i_ids=ner.b_to_i(names))
    assert got[0].tolist() == [-100, 1, 0, 0, 0, 0, -100, -100]
    got = ner.align_labels([[None, 0, 0, None]], [[1]], label_all_tokens=True, b_to_i_ids=ner.b_to_i(names), length=6)
    assert got.tolist() == [[-100, 1, 2, -100, -100, -100]]  # B-PER's later pieces get I-PER
    assert ner.b_to_i(names) == [0, 2, 2, 3]  # B-LOC has no I-LOC: stays


def test_align_labels_follows_overflow_windows():
    got = ner.align_labels([[None, 0, 1, None], [None, 1, 2, None]], [[4, 5, 6]], sample_mapping=[0, 0])
    assert got.tolist() == [[-100, 4, 5, -100], [-100, 5, 6, -100]]


def test_word_predictions_take_the_first_subword():
    assert ner.word_predictions([[None, 0, 0, 1, None]], [[9, 1, 2, 3, 9]]) == [{0: 1, 1: 3}]


def test_entity_spans_match_seqeval_chunking():
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    for _ in range(300):
        seq = [rng.choice(tags) for _ in range(rng.randint(0, 12))]
        got = [(s["entity"], s["word_start"], s["word_end"] - 1) for s in ner.entity_spans(seq)]
        assert got == get_entities(seq), seq


def test_entity_spans_character_offsets():
    text = "Ann  Lee flew to New York on 3 May"
    words, offsets = ner.split_words(text)
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", "B-DATE", "I-DATE"]
    spans = ner.entity_spans(tags, offsets, text)
    assert [(s["entity"], s["text"], s["start"], s["end"]) for s in spans] == [
        ("PER", "Ann  Lee", 0, 8), ("LOC", "New York", 17, 25), ("DATE", "3 May", 29, 34)]


# ---------------------------------------------------------------------------- a real tokenizer's outputs

REAL_CONTEXT = "Anna Smith was born in Rio de Janeiro in 1984. She works for Vertex Labs as an engineer."


@pytest.mark.parametrize("kind", ["bert", "roberta"])  # WordPiece with token types; byte-level BPE without
def test_train_positions_and_best_spans_on_a_real_tokenizer(kind):
    import pathlib

    import transformer_jax as tj

    tok = tj.load_tokenizer(pathlib.Path(__file__).parent / "fixtures" / "tokenizers" / kind)
    answers = ["Rio de Janeiro", "1984", "Vertex Labs", "Anna Smith", "engineer"]
    enc = tok(["Where was Anna Smith born?"] * len(answers), [REAL_CONTEXT] * len(answers),
              truncation="only_second", max_length=40, stride=6, return_overflowing_tokens=True,
              return_offsets_mapping=True, padding="max_length")
    sm, off = enc["overflow_to_sample_mapping"], enc["offset_mapping"]
    gold = [{"text": [a], "answer_start": [REAL_CONTEXT.index(a)]} for a in answers]
    s, e = qa.train_positions(off, enc["sequence_ids"], sm, gold)
    found = set()
    for k in range(len(sm)):
        if s[k] == 0:
            continue
        found.add(int(sm[k]))
        assert REAL_CONTEXT[off[k, s[k], 0]:off[k, e[k], 1]] == answers[sm[k]]
    assert found == set(range(len(answers)))  # every answer lies wholly inside some window
    start = np.full(off.shape[:2], -10.0)
    end = np.full(off.shape[:2], -10.0)
    start[np.arange(len(sm)), s] = np.where(s > 0, 5.0, -10.0)
    end[np.arange(len(sm)), e] = np.where(e > 0, 5.0, -10.0)
    best = qa.best_spans(start, end, off, enc["sequence_ids"], sm, [REAL_CONTEXT] * len(answers))
    assert [b["text"] for b in best] == answers


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_align_labels_and_word_predictions_on_a_real_tokenizer(kind):
    import pathlib

    import transformer_jax as tj

    tok = tj.load_tokenizer(pathlib.Path(__file__).parent / "fixtures" / "tokenizers" / kind)
    words = [["Anna", "Smith", "flew", "to", "Rio", "de", "Janeiro"], ["Vertex", "Labs", "hired", "Bo"]]
    labels = [[1, 2, 0, 0, 3, 4, 4], [5, 6, 0, 1]]
    enc = tok(words, is_split_into_words=True, padding=True)
    aligned = ner.align_labels(enc["word_ids"], labels, length=enc["input_ids"].shape[1])
    for row, ids, want in zip(aligned, enc["word_ids"], labels):
        firsts = [t for t, w in enumerate(ids) if w is not None and (t == 0 or ids[t - 1] != w)]
        assert row[firsts].tolist() == want  # each word's first piece carries its label
        assert (np.delete(row, firsts) == ner.IGNORE).all()  # nothing else does
        assert len(ids) > len(want) + 2  # the words really were split into pieces
    back = ner.word_predictions(enc["word_ids"], np.where(aligned == ner.IGNORE, 9, aligned))
    assert [list(b.values()) for b in back] == labels
