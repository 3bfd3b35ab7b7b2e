"""``tjax_summaries``: generated news-like documents with one-sentence summaries.

Returns records ``{"document": str, "summary": str}`` (XSum's column names), from ``make(rng)``.

A document reports one event -- a company opening an office, a person winning a prize, weather
closing schools, a match result, a company hiring -- in a lead sentence and one or two follow-up
sentences that carry the facts the summary needs, mixed with three to five background sentences
that mention other people, places and companies. The summary is a headline built from the event's
facts ("Helios Energy opens Lima office with 40 jobs"): to write it, a model has to pick the facts of
the event out of the distractors, reorder and compress them; copying the first sentence scores
only part of the ROUGE.
"""

from __future__ import annotations

import random

from transformer_jax.data import words as W

PRIZES = ("Golden Pen award", "national science prize", "city medal", "young designer award", "chess title")
TEAMS = ("Lisbon Lions", "Oslo Owls", "Lima Llamas", "Cairo Comets", "Dublin Dragons", "Osaka Otters",
         "Quito Quakes", "Hanoi Hawks")


def _office(rng, city, day):
    org, n = rng.choice(W.ORGS), rng.choice((12, 25, 40, 60, 150, 300))
    facts = [f"{org} has opened a new office in {city}, the company said on {day}.",
             f"The office will employ {n} people."]
    return facts, f"{org} opens {city} office with {n} jobs"


def _prize(rng, city, day):
    name, job, prize = W.person(rng), rng.choice(W.JOBS), rng.choice(PRIZES)
    article = "an" if job[0] in "aeiou" else "a"
    facts = [f"{name}, {article} {job} from {city}, won the {prize} on {day}.",
             f"The jury praised {name.split()[0]} for years of careful work."]
    return facts, f"{city} {job} {name} wins {prize}"


def _weather(rng, city, day):
    kind, n = rng.choice(("snow", "rain", "flooding", "wind")), rng.randint(3, 40)
    facts = [f"Heavy {kind} closed {n} schools in {city} on {day}.",
             f"Officials said the schools would reopen once the {kind} eased."]
    return facts, f"{kind.capitalize()} closes {n} schools in {city}"


def _match(rng, city, day):
    home, away = W.distinct(rng, TEAMS, 2)
    a, b = rng.randint(1, 6), rng.randint(0, 5)
    a, b = max(a, b + 1), min(a, b)  # the home side wins
    facts = [f"The {home} beat the {away} {a}-{b} in {city} on {day}.",
             f"It was the {rng.choice(('first', 'third', 'fifth'))} win of the season for the {home}."]
    return facts, f"{home} beat {away} {a}-{b}"


def _hiring(rng, city, day):
    org, name, job = rng.choice(W.ORGS), W.person(rng), rng.choice(W.JOBS)
    facts = [f"{org} announced on {day} that it has hired {name}.",
             f"{name.split()[0]} will lead a team of {job}s in {city}."]
    return facts, f"{org} hires {name} to lead {city} {job}s"


EVENTS = (_office, _prize, _weather, _match, _hiring)

BACKGROUND = (
    "Local officials in {city} declined to comment.",
    "{person}, a spokesperson, said more details would follow.",
    "Last year a similar plan in {city} was delayed.",
    "{org} made a comparable announcement in {month}.",
    "Residents of {city} have long asked for changes.",
    "{person} from {org} called the news encouraging.",
    "Analysts expect further news before {month}.",
    "The weather in {city} was mild for the season.",
    "Several groups had raised the issue with {person}.",
    "A report by {org} looked at the same question.",
)


def make(rng: random.Random) -> dict[str, str]:
    """One (document, summary) record."""
    city, day = rng.choice(W.CITIES), rng.choice(W.DAYS)
    facts, summary = rng.choice(EVENTS)(rng, city, day)
    others = [c for c in W.CITIES if c != city]
    background = [b.format(city=rng.choice(others), person=W.person(rng), org=rng.choice(W.ORGS),
                           month=rng.choice(W.MONTHS)) for b in W.distinct(rng, BACKGROUND, rng.randint(3, 5))]
    lead = rng.randrange(2)  # the lead sentence opens the document, or follows one background sentence
    sentences = background[:lead] + facts[:1] + background[lead:]
    sentences.insert(rng.randint(lead + 1, len(sentences)), facts[1])
    return {"document": " ".join(sentences), "summary": summary + "."}


def key(record) -> str:
    return record["document"]
