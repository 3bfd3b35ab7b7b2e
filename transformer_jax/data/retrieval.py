"""Key-value retrieval: a synthetic long-range classification task, built locally as ``tjax_retrieval``.

A sequence of ``length`` characters (one token each with the byte tokenizer)::

    ^ xqbz K7 hwp ... D2 ... mfa ?K        label 7

starts with a class marker ``^``, holds ``num_pairs`` key/value pairs (a distinct upper-case key
followed by a digit) among filler (random lower-case letters and dots), and ends with ``?`` and one of the keys; the
label is the digit bound to that key. Every pair lies more than ``min_distance`` positions from
both the marker (whose final state a ``pooling='cls'`` classifier reads) and the query, which are
``length - 1`` apart. So a model whose receptive field is shorter — ``Windowed(w)`` over L layers
reaches ``L * w`` positions — sees neither a value nor the query at the marker: it is at chance
(1 / ``num_values``) whatever it learns. Dense attention, or block-sparse attention with global
blocks (BigBird), can bring the query and the bound value to the marker: associative recall across
the whole sequence (cf. the "associative recall" probes of Ba et al. 2016 and Fu et al. 2023, H3).
With ``num_pairs=1`` the query is redundant and the task is to carry one far value to the marker.

Reproducible from a seed (one ``random.Random``), no download. ``answer`` reads the label back
from the text alone, independently of the generator (used by the tests).
"""

from __future__ import annotations

import dataclasses
import random
import string
from collections.abc import Iterator

import tensorflow_datasets as tfds

from transformer_jax.data.local_builder import LocalBuilder

SEED = 20240611
CLS, QUERY = "^", "?"
KEYS = string.ascii_uppercase
VALUES = string.digits
FILLER = string.ascii_lowercase + "."


def _check(length: int, num_pairs: int, num_keys: int, num_values: int, min_distance: int) -> None:
    if not 1 <= num_pairs <= num_keys <= len(KEYS):
        raise ValueError(f"retrieval: need 1 <= num_pairs={num_pairs} <= num_keys={num_keys} <= {len(KEYS)}")
    if not 2 <= num_values <= len(VALUES):
        raise ValueError(f"retrieval: num_values={num_values} must be in [2, {len(VALUES)}]")
    if min_distance < 0 or len(_starts(length, min_distance)) < num_pairs:
        raise ValueError(f"retrieval: length={length} leaves no room for {num_pairs} pairs at least "
                         f"min_distance={min_distance} from both ends; need length >= "
                         f"{2 * num_pairs + 3 + 2 * max(min_distance, 0)}")


def _starts(length: int, min_distance: int) -> range:
    """Where a pair may start: every other position (pairs never overlap), its key more than
    `min_distance` after the marker and its value at least `min_distance` + 2 before the query key
    (the last character)."""
    return range(min_distance + 1, length - 3 - min_distance, 2)


def example(rng: random.Random, *, length: int, num_pairs: int, num_keys: int, num_values: int,
            min_distance: int, filler: str = FILLER) -> tuple[str, int]:
    """One (text, label): ``length`` characters, label in [0, num_values)."""
    chars = [rng.choice(filler) for _ in range(length)]
    chars[0] = CLS
    keys = rng.sample(KEYS[:num_keys], num_pairs)
    values = [rng.randrange(num_values) for _ in keys]
    starts = rng.sample(_starts(length, min_distance), num_pairs)
    for start, key, value in zip(starts, keys, values):
        chars[start], chars[start + 1] = key, VALUES[value]
    asked = rng.randrange(num_pairs)
    chars[-2], chars[-1] = QUERY, keys[asked]
    return "".join(chars), values[asked]


def generate(num: int, *, seed: int = SEED, length: int = 512, num_pairs: int = 2, num_keys: int = 8,
             num_values: int = 10, min_distance: int = 128, filler: str = FILLER) -> Iterator[tuple[str, int]]:
    """``num`` (text, label) pairs, reproducibly from ``seed``. ``filler``: the characters drawn
    between the pairs (lower-case letters; a single one makes the pairs stand out)."""
    _check(length, num_pairs, num_keys, num_values, min_distance)
    if not filler or set(filler) & set(KEYS + VALUES + CLS + QUERY):
        raise ValueError(f"retrieval: filler={filler!r} must be non-empty and hold no key, value, {CLS!r} or {QUERY!r}")
    rng = random.Random(seed)
    for _ in range(num):
        yield example(rng, length=length, num_pairs=num_pairs, num_keys=num_keys, num_values=num_values,
                      min_distance=min_distance, filler=filler)


def answer(text: str) -> tuple[int, int]:
    """(label, distance from the bound value to the nearer end) read from the text alone.

    Raises ValueError when the text is not a well-formed retrieval example.
    """
    if len(text) < 4 or text[0] != CLS or text[-2] != QUERY or text[-1] not in KEYS:
        raise ValueError(f"not a retrieval example: {text[:8]!r}...{text[-8:]!r}")
    key = text[-1]
    body = text[:-2]
    hits = [i for i in range(len(body) - 1) if body[i] == key and body[i + 1] in VALUES]
    if len(hits) != 1:
        raise ValueError(f"key {key!r} is bound {len(hits)} times; want exactly once")
    return int(body[hits[0] + 1]), min(hits[0], len(text) - 1 - (hits[0] + 1))


@dataclasses.dataclass
class RetrievalConfig(tfds.core.BuilderConfig):
    length: int = 1024
    num_pairs: int = 2
    num_keys: int = 8
    num_values: int = 10
    min_distance: int = 256
    filler: str = FILLER
    num_train: int = 20_000
    num_validation: int = 1_000
    num_test: int = 1_000


class TjaxRetrieval(LocalBuilder):
    """tfds builder for key-value retrieval; configs 'default' (1024 tokens), 'small' (512), 'tiny'."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Pairs kept min_distance from the marker too; "
                     "'small' has one pair (a CPU budget).", "1.2.0": "'small': one filler character."}
    BUILDER_CONFIGS = [
        RetrievalConfig(name="default", description="1024 tokens, 2 pairs of 8 keys, 10 values; 20k/1k/1k."),
        RetrievalConfig(name="small", description="512 tokens, 1 pair of 8 keys, 10 values, filler '.'; "
                        "10k/500/500 (learnable in minutes on a CPU).", length=512, num_pairs=1, min_distance=128,
                        filler=".", num_train=10_000, num_validation=500, num_test=500),
        RetrievalConfig(name="tiny", description="64 tokens: for tests only.", length=64, min_distance=16,
                        num_train=200, num_validation=50, num_test=50),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=cfg.num_values)}
            ),
            supervised_keys=("text", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        total = cfg.num_test + cfg.num_validation + cfg.num_train
        examples = list(generate(total, length=cfg.length, num_pairs=cfg.num_pairs, num_keys=cfg.num_keys,
                                 num_values=cfg.num_values, min_distance=cfg.min_distance, filler=cfg.filler))
        a, b = cfg.num_test, cfg.num_test + cfg.num_validation
        return {"test": self._generate_examples(examples[:a]),
                "validation": self._generate_examples(examples[a:b]),
                "train": self._generate_examples(examples[b:])}

    def _generate_examples(self, examples) -> Iterator[tuple[int, dict]]:
        for i, (text, label) in enumerate(examples):
            yield i, {"text": text, "label": label}
