"""``tjax_entities``: generated sentences with tagged people, places, organisations and dates (NER).

Returns records ``{"tokens": list[str], "ner_tags": list[str]}`` (CoNLL-2003's column names; tags
in IOB2: ``B-PER I-PER B-LOC I-LOC B-ORG I-ORG B-DATE I-DATE O``), from ``make(rng)``.

Sentences come from about twenty templates ("{PER} moved to {LOC} in {DATE} .", "On {DATE} ,
{PER} met {PER} at {ORG} .") filled from `words`. It is not a lookup task: Jordan, Florence,
Sydney, Lincoln and Washington are people, places or part of a company depending on the sentence;
numbers are dates in some places and counts (O) in others; multi-word names ("Rio de Janeiro",
"Blue River Bank") need I- tags; a word that starts a sentence is not thereby a name. In the
validation and test splits (``make(rng, unseen=0.5)``) half the names come from lists that the
train split never uses, so a tagger must recognise them from their context.
"""

from __future__ import annotations

import random

from transformer_jax.data import words as W

TEMPLATES = (
    "{PER} moved to {LOC} in {DATE} .",
    "{PER} , who works for {ORG} , visited {LOC} on {DATE} .",
    "{ORG} opened an office in {LOC} .",
    "On {DATE} , {PER} met {PER} at {ORG} .",
    "{LOC} is home to {ORG} .",
    "{PER} bought {NUM} books in {LOC} .",
    "The meeting with {ORG} lasted {NUM} hours .",
    "{PER} said the {ORG} report was late .",
    "{PER} and {PER} flew from {LOC} to {LOC} on {DATE} .",
    "Nobody in {LOC} expected {PER} to win .",
    "{ORG} hired {PER} as a {JOB} in {DATE} .",
    "Yesterday {PER} wrote to {PER} about {LOC} .",
    "The {JOB} from {LOC} joined {ORG} .",
    "{NUM} people from {ORG} arrived in {LOC} .",
    "Since {DATE} , {PER} has lived near {LOC} .",
    "{PER} thanked {ORG} for the {NUM} tickets .",
    "Trains between {LOC} and {LOC} stopped on {DATE} .",
    "According to {PER} , {ORG} will move to {LOC} .",
    "Rain fell in {LOC} for {NUM} days .",
    "{PER} left {ORG} after {NUM} years .",
)


def _fill(slot: str, rng: random.Random, unseen: float) -> tuple[list[str], str | None]:
    new = rng.random() < unseen
    if slot == "PER":
        first, last = (W.UNSEEN_FIRST, W.UNSEEN_LAST) if new else (W.FIRST, W.LAST)
        name = W.person(rng, first, last) if rng.random() < 0.8 else rng.choice(first)
        return name.split(), "PER"
    if slot == "LOC":
        return rng.choice(W.UNSEEN_CITIES if new else W.CITIES).split(), "LOC"
    if slot == "ORG":
        return rng.choice(W.UNSEEN_ORGS if new else W.ORGS).split(), "ORG"
    if slot == "DATE":
        return W.date_words(rng), "DATE"
    if slot == "NUM":
        return [rng.choice((str(rng.randint(2, 40)), rng.choice(W.NUMBERS)))], None
    if slot == "JOB":
        return [rng.choice(W.JOBS)], None
    raise ValueError(f"unknown slot {slot!r}")


def make(rng: random.Random, unseen: float = 0.0) -> dict[str, list[str]]:
    """One tagged sentence; each name is drawn from the unseen lists with probability ``unseen``."""
    tokens, tags = [], []
    for piece in rng.choice(TEMPLATES).split():
        if piece.startswith("{"):
            words, kind = _fill(piece[1:-1], rng, unseen)
            tokens += words
            tags += ["O"] * len(words) if kind is None else [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        else:
            tokens.append(piece)
            tags.append("O")
    return {"tokens": tokens, "ner_tags": tags}


def make_eval(rng: random.Random) -> dict[str, list[str]]:
    return make(rng, unseen=0.5)


def key(record) -> str:
    return " ".join(record["tokens"])
