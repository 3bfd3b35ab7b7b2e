"""Word lists shared by the generated built-in datasets (pairs, entities, questions, summaries).

Some names are deliberately ambiguous -- Jordan, Florence, Sydney, Lincoln and Washington are
people in some sentences and places or companies in others -- so that a model must read the
context, not memorise the words. A few carry accents (Müller, Núñez, Zoë) so that character offsets
are exercised beyond ASCII.
"""

from __future__ import annotations

import random

FIRST = ("Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "James", "Kenji", "Laura",
         "Marco", "Nadia", "Omar", "Priya", "Rosa", "Samuel", "Tara", "Vera", "Wei", "Yusuf", "Zoë",
         "Jordan", "Florence", "Sydney")
LAST = ("Smith", "Garcia", "Müller", "Okafor", "Tanaka", "Silva", "Novak", "Haddad", "Kowalski", "Nguyen",
        "Johansson", "Núñez", "Rossi", "Mensah", "Ivanova", "Lincoln", "Washington", "Patel")
CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Toronto", "Cairo", "Dublin", "Osaka", "Quito",
          "New York", "San Diego", "Buenos Aires", "Cape Town", "Rio de Janeiro", "Kuala Lumpur",
          "Florence", "Sydney", "Washington", "Lincoln", "Jordan")
ORGS = ("Acme Corporation", "Globex", "Initech", "Umbrella Group", "Northwind Traders", "Blue River Bank",
        "Helios Energy", "Vertex Labs", "Orion Airlines", "Red Maple Press", "Polaris Institute",
        "Lincoln Motors", "Washington Mutual", "Sydney Harbour Trust")
JOBS = ("engineer", "teacher", "pilot", "nurse", "chef", "lawyer", "architect", "journalist", "farmer",
        "pharmacist", "electrician", "librarian")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")
OBJECTS = ("books", "chairs", "lamps", "paintings", "bicycles", "tickets", "apples", "maps", "clocks", "boxes")
VERBS = (("bought", "buy"), ("sold", "sell"), ("painted", "paint"), ("found", "find"), ("repaired", "repair"),
         ("ordered", "order"))


# Names that only the validation and test splits of tjax_entities use: a tagger must tag them
# from their context, as real NER test sets hold entities never seen in training.
UNSEEN_FIRST = ("Aiko", "Bruno", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ilya", "Jonas", "Kaveh", "Leila",
                "Mateo")
UNSEEN_LAST = ("Andersen", "Brennan", "Castillo", "Dvorak", "Eriksen", "Fontaine", "Gallagher", "Horvath")
UNSEEN_CITIES = ("Tbilisi", "Montevideo", "Accra", "Bergen", "Da Nang", "Porto Alegre", "Kraków", "Medellín")
UNSEEN_ORGS = ("Zenith Mining", "Cobalt Freight", "Silver Oak Foods", "Nimbus Analytics", "Harbor Light Media",
               "Quartz Systems")


def person(rng: random.Random, first=FIRST, last=LAST) -> str:
    return f"{rng.choice(first)} {rng.choice(last)}"


def date_words(rng: random.Random) -> list[str]:
    """A date as words: "3 May 2021", "May 3 , 2021", "2019" or a weekday."""
    day, month, year = rng.randint(1, 28), rng.choice(MONTHS), str(rng.randint(1950, 2024))
    kind = rng.randrange(4)
    if kind == 0:
        return [str(day), month, year]
    if kind == 1:
        return [month, str(day), ",", year]
    if kind == 2:
        return [year]
    return [rng.choice(DAYS)]


def distinct(rng: random.Random, pool, k: int) -> list:
    return rng.sample(list(pool), k)
