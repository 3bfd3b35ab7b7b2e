"""The generated built-in datasets: seeded, disjoint splits, written as JSON Lines that data.files
reads with its default columns (so every answer_start, tag and label is checked there too)."""

import collections
import json
import os

import pytest

from transformer_jax.data import builtin_files as B
from transformer_jax.data import files as F
from transformer_jax.data import ner

ROLES = {
    "tjax_pairs": dict(roles=("text", "text_pair", "label")),
    "tjax_entities": dict(roles=("tokens", "tags")),
    "tjax_questions": dict(roles=("id", "question", "context", "answers"), optional=("title",)),
    "tjax_summaries": dict(roles=("id", "source", "target")),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("builtin")


@pytest.mark.parametrize("name", B.NAMES)
def test_files_read_back_through_data_files(name, data_dir):
    dataset = f"{name}/tiny"
    for split, size in B.CONFIGS["tiny"].items():
        path = B.builtin_file(dataset, split, data_dir)
        assert path == os.path.join(data_dir, name, "tiny", "1.0.0", f"{split}.jsonl")
        role = "tags" if name == "tjax_entities" else "label" if name == "tjax_pairs" else None
        labels = F.derive_labels(B.builtin_file(dataset, "train", data_dir), role) if role else None
        src = F.open_files(path, **ROLES[name], labels=labels)  # checks every record
        assert size <= len(src) <= size + 2  # QA paragraphs keep their questions together
        assert src[0].keys() >= set(ROLES[name]["roles"])
    assert B.builtin_records(dataset, "validation") == [
        json.loads(line) for line in open(B.builtin_file(dataset, "validation", data_dir))]


@pytest.mark.parametrize("name", B.NAMES)
def test_seeded_and_splits_disjoint(name):
    a, b = B.generate(f"{name}/tiny"), B.generate(f"{name}/tiny")
    assert a == b
    key = B.REGISTRY[name].key
    keys = {split: {key(r) for r in rows} for split, rows in a.items()}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    big = B.generate(name, sizes={"test": 300, "validation": 1, "train": 1})
    assert big["test"][:200] == a["test"][:200]  # a smaller config's test split is a prefix of a larger one's
    assert B.generate(f"{name}/tiny", seed=1)["train"][:20] != a["train"][:20]


def test_pairs_labels_are_balanced():
    counts = collections.Counter(r["label"] for r in B.generate("tjax_pairs/tiny")["train"])
    assert set(counts) == {"entailment", "neutral", "contradiction"}
    assert min(counts.values()) > 0.28 * sum(counts.values())


def test_entities_are_bio_and_ambiguous_words_take_their_tag_from_context():
    rows = B.generate("tjax_entities/tiny")["train"]
    kinds = collections.Counter()
    tag_of_word = collections.defaultdict(set)
    for r in rows:
        for span in ner.entity_spans(r["ner_tags"]):
            kinds[span["entity"]] += 1
        assert all(t == "O" or t[:2] in ("B-", "I-") for t in r["ner_tags"])
        for prev, t in zip(["O", *r["ner_tags"]], r["ner_tags"]):
            assert not (t.startswith("I-") and prev[2:] != t[2:])  # IOB2: I- only inside an entity
        for w, t in zip(r["tokens"], r["ner_tags"]):
            tag_of_word[w].add(t[2:] or "O")
    assert set(kinds) == {"PER", "LOC", "ORG", "DATE"} and min(kinds.values()) > 200
    assert {"PER", "LOC"} <= tag_of_word["Florence"] and {"PER", "LOC", "ORG"} <= tag_of_word["Lincoln"]


def test_questions_have_unique_ids_and_answers_of_the_person_asked_about():
    rows = B.generate("tjax_questions/tiny")["validation"]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        (text,), (start,) = r["answers"]["text"], r["answers"]["answer_start"]
        assert r["context"][start:start + len(text)] == text
        sentence = r["context"][:start].rsplit(". ", 1)[-1] + r["context"][start:].split(".")[0]
        asked = [w for w in r["question"].rstrip("?").split() if w[0].isupper() and w not in ("Where", "When", "In",
                 "Which", "Who", "What")]
        assert any(w in sentence for w in asked) or text in r["question"] or r["question"].startswith("Who was born")


def test_summaries_name_the_facts_of_the_event():
    rows = B.generate("tjax_summaries/tiny")["test"]
    for r in rows:
        numbers = [w for w in r["summary"].rstrip(".").replace("-", " ").split() if w.isdigit()]
        assert all(n in r["document"] for n in numbers)
        assert len(r["summary"].split()) < len(r["document"].split()) / 3


def test_unknown_names_are_named_errors():
    with pytest.raises(ValueError, match="unknown built-in dataset 'tjax_nope'"):
        B.builtin_file("tjax_nope", "train")
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        B.builtin_file("tjax_pairs/huge", "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        B.builtin_records("tjax_pairs/tiny", "dev")
    assert B.is_builtin("tjax_pairs/tiny") and not B.is_builtin("tjax_numbers")


def _nli_oracle(premise: str, hypothesis: str) -> str:
    """The label, recomputed from the two texts alone (a reading independent of the generator)."""
    import re

    from transformer_jax.data.words import NUMBERS

    who, verb, n, obj, city, day = re.fullmatch(r"(\S+ \S+) (\S+) (\S+) (\S+) in (.+) on (\S+)\.", premise).groups()
    if m := re.fullmatch(r"(\S+ \S+) (\S+) (\S+) (\S+) in (.+) on (\S+)\.", hypothesis):
        w, _, n2, _, _, _ = m.groups()
        return "neutral" if w != who else "entailment" if n2 == n else "contradiction"
    if m := re.fullmatch(r"(\S+ \S+) was in (.+) on (\S+)\.", hypothesis):
        _, c2, d2 = m.groups()
        return "neutral" if d2 != day else "entailment" if c2 == city else "contradiction"
    if m := re.fullmatch(r"(\S+ \S+) \S+ more than (\S+) \S+\.", hypothesis):
        w, m2 = m.groups()
        return "neutral" if w != who else "entailment" if NUMBERS.index(m2) < NUMBERS.index(n) else "contradiction"
    if m := re.fullmatch(r"(\S+ \S+) did not \S+ any \S+ on (\S+)\.", hypothesis):
        return "contradiction" if m.group(2) == day else "neutral"
    w, d2 = re.fullmatch(r"(\S+ \S+) \S+ \S+ on (\S+)\.", hypothesis).groups()
    return "entailment" if (w, d2) == (who, day) else "neutral"


def test_pairs_labels_follow_from_the_two_texts():
    rows = B.generate("tjax_pairs/tiny")["train"]
    for r in rows:
        assert _nli_oracle(r["sentence1"], r["sentence2"]) == r["label"], r
    by_shape = collections.defaultdict(collections.Counter)  # no hypothesis-only shortcut: shapes carry
    for r in rows:                                              # several labels each
        shape = tuple(w for w in r["sentence2"].split() if w in ("was", "in", "on", "more", "did", "not"))
        by_shape[shape][r["label"]] += 1
    assert len(by_shape) == 5 and sum(len(c) == 3 for c in by_shape.values()) == 3
    assert all(min(c.values()) > 0.2 * sum(c.values()) for c in by_shape.values())


def test_entities_evaluation_names_partly_unseen_in_train():
    from transformer_jax.data import words as W

    g = B.generate("tjax_entities/tiny")
    unseen = set(W.UNSEEN_FIRST) | set(W.UNSEEN_LAST) | {w for n in W.UNSEEN_CITIES + W.UNSEEN_ORGS for w in n.split()}
    train_words = {w for r in g["train"] for w in r["tokens"]}
    assert not train_words & unseen
    names = [w for r in g["validation"] for w, t in zip(r["tokens"], r["ner_tags"]) if t[2:] in ("PER", "LOC", "ORG")]
    share = sum(w in unseen for w in names) / len(names)
    assert 0.35 < share < 0.65


def test_a_builtin_split_is_named_like_a_file(data_dir, tmp_path):
    got = F.expand(["tjax_entities/tiny:validation", "tjax_pairs/tiny:test"], data_dir)
    assert got == [B.builtin_file("tjax_entities/tiny", "validation", data_dir),
                   B.builtin_file("tjax_pairs/tiny", "test", data_dir)]
    labels = F.derive_labels("tjax_pairs/tiny:train", data_dir=data_dir)
    assert labels == ("contradiction", "entailment", "neutral")
    src = F.open_files("tjax_pairs/tiny:validation", ("text", "text_pair", "label"), labels=labels, data_dir=data_dir)
    assert len(src) == 200
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        F.expand("tjax_pairs/tiny:dev", data_dir)
    with pytest.raises(ValueError, match="no such file"):
        F.expand("tjax_nothing:train", data_dir)
