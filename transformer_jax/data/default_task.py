"""The built-in default task, ``tjax_numbers``: digits to English words.

A small translation task that needs no download, so that the library trains
and evaluates out of the box (BLEU on a held-out split, beam search and all).
It behaves like translation rather than copying: the target vocabulary differs
from the source, one source token can become several words, and words are
reordered. Four patterns, chosen at random from a fixed seed:

  17.03.2024    -> the seventeenth of march two thousand twenty-four
  1987-11-05    -> november fifth nineteen eighty-seven
  4052 apples   -> four thousand fifty-two apples
  $45.20        -> forty-five dollars and twenty cents

Every source has exactly one target (the rule is deterministic), sources are
at most 13 characters and targets at most 7 words. Splits are disjoint: one
stream of distinct sources is drawn from the seed and cut into test,
validation and train, in that order, so a smaller config's test split is a
prefix of the larger config's test split.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
from collections.abc import Iterator

import tensorflow_datasets as tfds

from transformer_jax.data.local_builder import LocalBuilder

SEED = 20240317

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL_ONES = {
    1: "first",
    2: "second",
    3: "third",
    4: "fourth",
    5: "fifth",
    6: "sixth",
    7: "seventh",
    8: "eighth",
    9: "ninth",
    10: "tenth",
    11: "eleventh",
    12: "twelfth",
    13: "thirteenth",
    14: "fourteenth",
    15: "fifteenth",
    16: "sixteenth",
    17: "seventeenth",
    18: "eighteenth",
    19: "nineteenth",
    20: "twentieth",
    30: "thirtieth",
}
_MONTHS = ("january february march april may june july august september october november december").split()
# (singular, plural): the source carries the right form, the target copies it.
_NOUNS = (
    ("apple", "apples"),
    ("book", "books"),
    ("bird", "birds"),
    ("box", "boxes"),
    ("car", "cars"),
    ("cat", "cats"),
    ("chair", "chairs"),
    ("child", "children"),
    ("coin", "coins"),
    ("cup", "cups"),
    ("dog", "dogs"),
    ("egg", "eggs"),
    ("house", "houses"),
    ("key", "keys"),
    ("lamp", "lamps"),
    ("tree", "trees"),
)
_CURRENCIES = (("$", "dollar", "dollars"), ("€", "euro", "euros"))


def cardinal(n: int) -> str:
    """0..9999 in words: 4052 -> 'four thousand fifty-two'."""
    if not 0 <= n <= 9999:
        raise ValueError(f"cardinal() covers 0..9999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + (f" {cardinal(rest)}" if rest else "")
    rest = n % 1000
    return f"{cardinal(n // 1000)} thousand" + (f" {cardinal(rest)}" if rest else "")


def ordinal(n: int) -> str:
    """1..31 in words: 23 -> 'twenty-third'."""
    if n in _ORDINAL_ONES:
        return _ORDINAL_ONES[n]
    if 20 < n < 40:
        return f"{_TENS[n // 10]}-{_ORDINAL_ONES[n % 10]}"
    raise ValueError(f"ordinal() covers 1..39, got {n}")


def year_words(y: int) -> str:
    """1900..2099 as spoken: 1905 -> 'nineteen oh five', 2024 -> 'two thousand twenty-four'."""
    if 2000 <= y <= 2099:
        return cardinal(y)
    if 1900 <= y <= 1999:
        yy = y % 100
        tail = "hundred" if yy == 0 else (f"oh {_ONES[yy]}" if yy < 10 else cardinal(yy))
        return f"nineteen {tail}"
    raise ValueError(f"year_words() covers 1900..2099, got {y}")


def _date(rng: random.Random) -> datetime.date:
    start = datetime.date(1900, 1, 1).toordinal()
    end = datetime.date(2099, 12, 31).toordinal()
    return datetime.date.fromordinal(rng.randint(start, end))


def sample_pair(rng: random.Random) -> tuple[str, str]:
    """One (source, target) pair; the target is a function of the source."""
    kind = rng.random()
    if kind < 0.25:  # European date: day first, month spelled out after 'of'.
        d = _date(rng)
        return (
            f"{d.day:02d}.{d.month:02d}.{d.year}",
            f"the {ordinal(d.day)} of {_MONTHS[d.month - 1]} {year_words(d.year)}",
        )
    if kind < 0.45:  # ISO date: year first in the source, last in the target.
        d = _date(rng)
        return (
            d.isoformat(),
            f"{_MONTHS[d.month - 1]} {ordinal(d.day)} {year_words(d.year)}",
        )
    if kind < 0.75:  # Quantity of a noun.
        n = rng.choice((rng.randint(1, 20), rng.randint(1, 999), rng.randint(1, 9999)))
        noun = rng.choice(_NOUNS)[0 if n == 1 else 1]
        return f"{n} {noun}", f"{cardinal(n)} {noun}"
    # Money: the currency symbol moves to after the amount and becomes a word.
    symbol, one, many = rng.choice(_CURRENCIES)
    units = rng.randint(0, 999)
    cents = rng.choice((0, rng.randint(1, 99)))
    if units == 0 and cents == 0:
        units = 1
    words = []
    if units:
        words.append(f"{cardinal(units)} {one if units == 1 else many}")
    if cents:
        words.append(f"{cardinal(cents)} {'cent' if cents == 1 else 'cents'}")
    source = f"{symbol}{units}" + (f".{cents:02d}" if cents else "")
    return source, " and ".join(words)


def generate_splits(sizes: dict[str, int], seed: int = SEED) -> dict[str, list[tuple[str, str]]]:
    """Distinct pairs cut into splits in the order of ``sizes`` (test first)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[tuple[str, str]]] = {}
    for split, n in sizes.items():
        pairs = []
        while len(pairs) < n:
            src, tgt = sample_pair(rng)
            if src not in seen:
                seen.add(src)
                pairs.append((src, tgt))
        out[split] = pairs
    return out


@dataclasses.dataclass
class NumbersConfig(tfds.core.BuilderConfig):
    num_train: int = 64_000
    num_validation: int = 1_000
    num_test: int = 1_000


class TjaxNumbers(LocalBuilder):
    """tfds builder for the default task; prepared locally, no download."""

    VERSION = tfds.core.Version("1.0.0")

    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        NumbersConfig(name="default", description="64k/1k/1k examples."),
        NumbersConfig(
            name="tiny",
            description="2k/200/200 examples, for tests.",
            num_train=2_000,
            num_validation=200,
            num_test=200,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"source": tfds.features.Text(), "target": tfds.features.Text()}
            ),
            supervised_keys=("source", "target"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        pairs = generate_splits(
            {"test": cfg.num_test, "validation": cfg.num_validation, "train": cfg.num_train}
        )
        return {split: self._generate_examples(p) for split, p in pairs.items()}

    def _generate_examples(self, pairs) -> Iterator[tuple[int, dict[str, str]]]:
        for i, (src, tgt) in enumerate(pairs):
            yield i, {"source": src, "target": tgt}
