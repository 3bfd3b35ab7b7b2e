"""``tjax_questions``: generated paragraphs about two or three people, with questions whose answers
are spans of the paragraph (extractive QA, SQuAD v1.1 style).

Returns, from ``make(rng)``, the records of one paragraph (one per question), each
``{"id": str, "title": str, "context": str, "question": str, "answers": {"text": [str],
"answer_start": [int]}}`` -- the reference library's SQuAD layout; ``context[answer_start:][:len(text)]``
is the answer.

A paragraph gives each person a birthplace and year, an employer and a job ("Priya Rossi was born
in Quito in 1987. Priya works for Vertex Labs as a pilot."), in a shuffled order, with places,
years, employers and jobs all different within a paragraph. Questions ask for one fact of one person
("Where was Priya Rossi born?", "Which company does Priya work for?") or who was born somewhere, so
the model must find the sentence about the person asked for among sentences of the same shape.
"""

from __future__ import annotations

import random

from transformer_jax.data import words as W

QUESTIONS = {
    "city": ("Where was {name} born?", "In which city was {first} born?"),
    "year": ("When was {name} born?", "In which year was {first} born?"),
    "org": ("Which company does {first} work for?", "Who employs {name}?"),
    "job": ("What is the job of {name}?", "What does {first} do at {org}?"),
    "name": ("Who was born in {city}?",),
}


def _people(rng: random.Random, k: int) -> list[dict[str, str]]:
    firsts = W.distinct(rng, W.FIRST, k)
    lasts = W.distinct(rng, W.LAST, k)
    cities = W.distinct(rng, W.CITIES, k)
    orgs = W.distinct(rng, W.ORGS, k)
    jobs = W.distinct(rng, W.JOBS, k)
    years = [str(y) for y in rng.sample(range(1950, 2005), k)]
    return [{"first": firsts[i], "name": f"{firsts[i]} {lasts[i]}", "city": cities[i], "year": years[i],
             "org": orgs[i], "job": jobs[i]} for i in range(k)]


def _paragraph(rng: random.Random, people) -> tuple[str, list[dict[str, int]]]:
    """The context, and for each person the character start of each of their facts."""
    sentences = []
    for i, p in enumerate(people):
        sentences.append((i, "born", ["{name}", " was born in ", "{city}", " in ", "{year}", "."]))
        article = " as an " if p["job"][0] in "aeiou" else " as a "
        sentences.append((i, "work", ["{first}", " works for ", "{org}", article, "{job}", "."]))
    rng.shuffle(sentences)
    for i in range(len(people)):  # a person's "born" sentence (with the full name) comes first
        born, work = (next(j for j, s in enumerate(sentences) if s[:2] == (i, kind)) for kind in ("born", "work"))
        if work < born:
            sentences[born], sentences[work] = sentences[work], sentences[born]
    text, starts = "", [dict() for _ in people]
    for i, _, parts in sentences:
        if text:
            text += " "
        for part in parts:
            if part.startswith("{"):
                field = part[1:-1]
                starts[i].setdefault(field, len(text))
                text += people[i][field]
            else:
                text += part
    return text, starts


def make(rng: random.Random) -> list[dict]:
    """The question records of one paragraph (one to three questions)."""
    people = _people(rng, rng.choice((2, 2, 3)))
    context, starts = _paragraph(rng, people)
    records = []
    for i in W.distinct(rng, range(len(people)), min(len(people), rng.randint(1, 3))):
        p, field = people[i], rng.choice(tuple(QUESTIONS))
        question = rng.choice(QUESTIONS[field]).format(**p)
        records.append({"title": people[0]["name"], "context": context, "question": question,
                        "answers": {"text": [p[field]], "answer_start": [starts[i][field]]}})
    return records


def key(record) -> str:
    return record["context"] + "\t" + record["question"]
