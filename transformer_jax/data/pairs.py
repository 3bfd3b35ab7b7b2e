"""``tjax_pairs``: generated sentence pairs labelled entailment / neutral / contradiction (NLI).

Returns records ``{"sentence1": str, "sentence2": str, "label": str}`` (GLUE's column names;
labels ``entailment``, ``neutral``, ``contradiction``), from ``make(rng)``.

The premise states one event: who did what to how many of which objects, where and when ("Elena
Novak bought seven lamps in Oslo on Friday."). A hypothesis is drawn from five shapes, and most
shapes occur with every label, so the label follows from comparing the two sentences, not from the
hypothesis alone:

  "{who} {verb} {n} {obj} in {city} on {day}."  the same facts: entailment; another number:
                                                contradiction; another person: neutral
  "{who} was in {city} on {day}."               same city and day: entailment; another city that
                                                day: contradiction; another day: neutral
  "{who} {verb} more than {m} {obj}."           m < n: entailment; m >= n: contradiction;
                                                another person: neutral
  "{who} {verb} {obj} on {day}."                same: entailment; another person or day: neutral
  "{who} did not {verb} any {obj} on {day}."    same: contradiction; another day: neutral
"""

from __future__ import annotations

import random

from transformer_jax.data import words as W

LABELS = ("entailment", "neutral", "contradiction")


def _event(rng: random.Random) -> dict[str, str]:
    verb, base = rng.choice(W.VERBS)
    return {"who": W.person(rng), "verb": verb, "base": base, "n": rng.randrange(len(W.NUMBERS)),
            "obj": rng.choice(W.OBJECTS), "city": rng.choice(W.CITIES), "day": rng.choice(W.DAYS)}


def _other(rng: random.Random, pool, value):
    return rng.choice([x for x in pool if x != value])


def _restate(e, label, rng) -> str:
    who, n = e["who"], e["n"]
    if label == "contradiction":
        n = _other(rng, range(len(W.NUMBERS)), n)
    elif label == "neutral":
        who = _other_person(rng, who)
    return f"{who} {e['verb']} {W.NUMBERS[n]} {e['obj']} in {e['city']} on {e['day']}."


def _was_in(e, label, rng) -> str:
    city, day = e["city"], e["day"]
    if label == "contradiction":
        city = _other(rng, W.CITIES, city)
    elif label == "neutral":
        city, day = rng.choice(W.CITIES), _other(rng, W.DAYS, day)
    return f"{e['who']} was in {city} on {day}."


def _more_than(e, label, rng) -> str:
    who, n = e["who"], e["n"]
    if label == "entailment" and n == 0 or label == "contradiction" and n == len(W.NUMBERS) - 1:
        return _restate(e, label, rng)  # "more than one" is not in the word list; keep the label
    m = {"entailment": lambda: rng.randrange(n), "contradiction": lambda: rng.randrange(n, len(W.NUMBERS)),
         "neutral": lambda: rng.randrange(len(W.NUMBERS))}[label]()
    if label == "neutral":
        who = _other_person(rng, who)
    return f"{who} {e['verb']} more than {W.NUMBERS[m]} {e['obj']}."


def _did(e, label, rng) -> str:
    who, day = e["who"], e["day"]
    if label == "neutral":
        who, day = (_other_person(rng, who), day) if rng.random() < 0.5 else (who, _other(rng, W.DAYS, day))
    return f"{who} {e['verb']} {e['obj']} on {day}."


def _did_not(e, label, rng) -> str:
    day = e["day"] if label == "contradiction" else _other(rng, W.DAYS, e["day"])
    return f"{e['who']} did not {e['base']} any {e['obj']} on {day}."


def _other_person(rng: random.Random, who: str) -> str:
    while (other := W.person(rng)) == who:
        pass
    return other


# shape -> the labels it can carry
SHAPES = ((_restate, LABELS), (_was_in, LABELS), (_more_than, LABELS), (_did, ("entailment", "neutral")),
          (_did_not, ("neutral", "contradiction")))


def make(rng: random.Random) -> dict[str, str]:
    """One (premise, hypothesis, label) record."""
    e = _event(rng)
    premise = f"{e['who']} {e['verb']} {W.NUMBERS[e['n']]} {e['obj']} in {e['city']} on {e['day']}."
    shape, labels = rng.choice(SHAPES)
    label = rng.choice(labels)
    return {"sentence1": premise, "sentence2": shape(e, label, rng), "label": label}


def key(record) -> str:
    return record["sentence1"] + "\t" + record["sentence2"]
