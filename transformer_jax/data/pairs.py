"""``tjax_pairs``: generated sentence pairs labelled entailment / neutral / contradiction (NLI).

Returns records ``{"sentence1": str, "sentence2": str, "label": str}`` (GLUE's column names;
labels ``entailment``, ``neutral``, ``contradiction``, one third each), from ``make(rng)``.

The premise states one event: who did what to how many of which objects, where and when ("Elena
Novak bought seven lamps in Oslo on Friday."). The hypothesis restates part of it (entailment),
changes one fact or negates it (contradiction), or adds a fact the premise does not give, or
speaks of someone else (neutral). The label follows from the two texts alone. As in SNLI, a few
words give the label away ("never", "because"), but most hypotheses are decided only by comparing
them with the premise (a changed number or day; "was in" the same city or another one).
"""

from __future__ import annotations

import random

from transformer_jax.data import words as W

LABELS = ("entailment", "neutral", "contradiction")


def _event(rng: random.Random) -> dict[str, str]:
    verb, base = rng.choice(W.VERBS)
    return {"who": W.person(rng), "verb": verb, "base": base, "n": rng.choice(W.NUMBERS),
            "obj": rng.choice(W.OBJECTS), "city": rng.choice(W.CITIES), "day": rng.choice(W.DAYS)}


def _other(rng: random.Random, pool, value):
    return rng.choice([x for x in pool if x != value])


def _entailment(e, rng) -> str:
    return rng.choice((
        f"{e['who']} {e['verb']} {e['obj']} in {e['city']}.",
        f"Someone {e['verb']} {e['n']} {e['obj']} on {e['day']}.",
        f"{e['who']} was in {e['city']} on {e['day']}.",
        f"{e['who']} {e['verb']} some {e['obj']}.",
        f"On {e['day']}, {e['who']} {e['verb']} {e['n']} {e['obj']}.",
    ))


def _contradiction(e, rng) -> str:
    return rng.choice((
        f"{e['who']} {e['verb']} {_other(rng, W.NUMBERS, e['n'])} {e['obj']} in {e['city']} on {e['day']}.",
        f"{e['who']} never {e['base']}s {e['obj']}.",
        f"{e['who']} was not in {e['city']} on {e['day']}.",
        f"{e['who']} {e['verb']} {e['n']} {e['obj']} in {e['city']} on {_other(rng, W.DAYS, e['day'])}.",
        f"Nobody {e['verb']} {e['obj']} in {e['city']} on {e['day']}.",
    ))


def _neutral(e, rng) -> str:
    return rng.choice((
        f"{e['who']} {e['verb']} {e['n']} {e['obj']} in {e['city']} with {W.person(rng)}.",
        f"{W.person(rng)} {e['verb']} {e['obj']} in {e['city']}.",
        f"{e['who']} {e['verb']} {e['obj']} because {W.person(rng)} asked.",
        f"{e['who']} was in {_other(rng, W.CITIES, e['city'])} on {_other(rng, W.DAYS, e['day'])}.",
        f"{e['who']} likes {e['obj']}.",
    ))


def make(rng: random.Random) -> dict[str, str]:
    """One (premise, hypothesis, label) record."""
    e = _event(rng)
    premise = f"{e['who']} {e['verb']} {e['n']} {e['obj']} in {e['city']} on {e['day']}."
    label = rng.choice(LABELS)
    hypothesis = {"entailment": _entailment, "neutral": _neutral, "contradiction": _contradiction}[label](e, rng)
    return {"sentence1": premise, "sentence2": hypothesis, "label": label}


def key(record) -> str:
    return record["sentence1"] + "\t" + record["sentence2"]
