"""Built-in datasets written as JSON Lines files, so that they and the user's files take one path
(``data.files``). Generated from a fixed seed; no download.

  tjax_pairs      sentence1, sentence2, label (entailment / neutral / contradiction)   `pairs`
  tjax_entities   tokens, ner_tags (IOB2: PER, LOC, ORG, DATE)                        `entities`
  tjax_questions  id, title, context, question, answers {text, answer_start}          `questions`
  tjax_summaries  id, document, summary                                               `summaries`

Each has the configs ``default`` (20k/1k/1k records) and ``tiny`` (1k/200/200, for tests), named
``"tjax_pairs"`` / ``"tjax_pairs/tiny"``. Wherever files are given, ``"tjax_pairs/tiny:train"`` names
a split's file (``data.files.expand``): ``--config.data.train_files=tjax_pairs:train``.

Returns:
  ``NAMES``: the built-in names; ``is_builtin(dataset) -> bool``.
  ``builtin_records(dataset, split) -> list[dict]``: the records of a split, generated in memory.
  ``builtin_file(dataset, split, data_dir=None) -> str``: the path of the split's JSON Lines file,
    written on first use under ``<data_dir>/<name>/<config>/<version>/<split>.jsonl`` (default
    data_dir: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``, where the tfds built-ins live).

Not trivial, yet learnable (default config, validation split; simple baselines that a trained
model should beat): pairs: bag-of-words logistic regression on both sentences 41% accuracy, the
majority class 40%; entities: each word's most frequent train tag,
entity F1 0.56 (half the validation and test names never occur in train); questions: the
first span of the asked type in the context, exact match 43%; summaries: the lead sentence,
ROUGE-1/2/L 31/21/29.

Splits are disjoint: one stream of distinct records (by their text) is drawn from the seed and cut
into test, validation and train, in that order, so a smaller config's test split is a prefix of
the larger config's. QA records of one paragraph stay in one split.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from collections.abc import Callable

from transformer_jax.data import entities, pairs, questions, summaries

SEED = 20260401
SPLITS = ("test", "validation", "train")
CONFIGS = {"default": {"test": 1_000, "validation": 1_000, "train": 20_000},
           "tiny": {"test": 200, "validation": 200, "train": 1_000}}


@dataclasses.dataclass(frozen=True)
class BuiltIn:
    """A generated dataset: ``make(rng)`` gives a record (or a list of records that share a split),
    ``key(record)`` the text that makes it distinct; ``make_eval`` (default ``make``) makes the
    validation and test records."""

    make: Callable[[random.Random], dict | list[dict]]
    key: Callable[[dict], str]
    version: str = "1.0.0"
    ids: bool = False  # number the records ("id": "000042")
    make_eval: Callable[[random.Random], dict | list[dict]] | None = None


REGISTRY: dict[str, BuiltIn] = {
    "tjax_pairs": BuiltIn(pairs.make, pairs.key),
    "tjax_entities": BuiltIn(entities.make, entities.key, make_eval=entities.make_eval),
    "tjax_questions": BuiltIn(questions.make, questions.key, ids=True),
    "tjax_summaries": BuiltIn(summaries.make, summaries.key, ids=True),
}
NAMES = tuple(REGISTRY)


def _parse(dataset: str) -> tuple[str, str]:
    name, _, config = dataset.partition("/")
    if name not in REGISTRY:
        raise ValueError(f"unknown built-in dataset {name!r}; valid: {', '.join(NAMES)}")
    config = config or "default"
    if config not in CONFIGS:
        raise ValueError(f"{name}: unknown config {config!r}; valid: {', '.join(CONFIGS)}")
    return name, config


def is_builtin(dataset: str) -> bool:
    return dataset.partition("/")[0] in REGISTRY


def generate(dataset: str, seed: int = SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Every split of ``dataset``, generated in memory (``sizes`` overrides the config's)."""
    name, config = _parse(dataset)
    spec, sizes = REGISTRY[name], sizes or CONFIGS[config]
    rng, seen, out, count = random.Random(f"{seed}/{name}"), set(), {}, 0
    for split in SPLITS:
        rows: list[dict] = []
        make = spec.make if split == "train" or spec.make_eval is None else spec.make_eval
        while len(rows) < sizes[split]:
            made = make(rng)
            group = made if isinstance(made, list) else [made]
            if any(spec.key(r) in seen for r in group):
                continue
            for r in group:
                seen.add(spec.key(r))
                if spec.ids:
                    r = {"id": f"{count:06d}", **r}
                    count += 1
                rows.append(r)
        out[split] = rows
    return out


def builtin_records(dataset: str, split: str) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"{dataset}: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return generate(dataset)[split]


def _default_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def builtin_file(dataset: str, split: str, data_dir: str | os.PathLike | None = None) -> str:
    """The JSON Lines file of ``dataset``/``split``, written (all splits, atomically) if missing."""
    name, config = _parse(dataset)
    if split not in SPLITS:
        raise ValueError(f"{dataset}: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    folder = os.path.join(os.fspath(data_dir) if data_dir else _default_dir(), name, config, REGISTRY[name].version)
    path = os.path.join(folder, f"{split}.jsonl")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    for s, rows in generate(f"{name}/{config}").items():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, os.path.join(folder, f"{s}.jsonl"))  # atomic: concurrent writers agree
    return path
