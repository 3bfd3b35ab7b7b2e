"""ListOps as in Long Range Arena, built locally as the tfds dataset ``tjax_listops``.

Tay et al. (2021), "Long Range Arena", https://arxiv.org/abs/2011.04006, §3.1,
after Nangia & Bowman (2018). An example is a nested prefix expression over the
digits 0-9 with operators MIN, MAX, MED (median, rounded down) and SM (sum
modulo 10), e.g. ``[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]`` -> 5; the label
(0-9) is its value. As in the LRA generator: a node below the maximum depth
(10) is an operator with probability 0.25, else a digit; an operator takes 2
to 10 arguments; expressions are kept when their length (operators, digits and
']', no parentheses) is strictly between 500 and 2000 tokens; duplicates are
dropped; 96k/2k/2k splits. Unlike LRA (global ``random`` and a Python ``set``,
so not reproducible) the stream here is drawn from one seeded
``random.Random``; the text is written without LRA's tuple parentheses, which
carry no information.

``evaluate`` is a separate stack-based evaluator of the text, used to check
the generator's labels.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import tensorflow_datasets as tfds

from transformer_jax.data.local_builder import LocalBuilder

SEED = 20210101
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
# The tokenizer's words; "[MASK]" (never in an expression) comes last, for masked-LM self-pretraining
# on the ListOps inputs (Amos et al. 2024), so the expression tokens keep their ids.
VOCAB = (*OPERATORS, END, *(str(d) for d in range(10)), "[MASK]")
VALUE_P = 0.25  # probability that a node above max depth is an operator


def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        s = sorted(args)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}; valid: {OPERATORS}")


class _TooLong(Exception):
    pass


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, out: list[str], budget: int) -> int:
    """Appends one random subtree's tokens to ``out``; returns its value."""
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        v = rng.randrange(10)
        out.append(str(v))
        return v
    if len(out) + 2 > budget:  # this tree is already too long: stop early
        raise _TooLong
    num_args = rng.randint(2, max_args)
    start = len(out)
    out.append("")  # operator placeholder: LRA draws the operator after the arguments
    values = [_tree(rng, depth + 1, max_depth, max_args, out, budget) for _ in range(num_args)]
    op = rng.choice(OPERATORS)
    out[start] = op
    out.append(END)
    if len(out) > budget:
        raise _TooLong
    return _apply(op, values)


def generate(
    num: int,
    *,
    seed: int = SEED,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> Iterator[tuple[str, int]]:
    """Yields ``num`` distinct (expression, value) pairs, reproducibly from ``seed``.

    Lengths are strictly between ``min_length`` and ``max_length`` (as in LRA).
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    produced = 0
    while produced < num:
        tokens: list[str] = []
        try:
            value = _tree(rng, 1, max_depth, max_args, tokens, max_length)
        except _TooLong:
            continue
        if not min_length < len(tokens) < max_length:
            continue
        text = " ".join(tokens)
        if text in seen:
            continue
        seen.add(text)
        produced += 1
        yield text, value


def evaluate(text: str) -> int:
    """Value of a ListOps expression, by a stack machine over its tokens.

    Independent of the generator: it reads only the text. Raises ValueError on
    malformed input.
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for tok in text.replace("(", " ").replace(")", " ").split():
        if result is not None:
            raise ValueError(f"trailing token {tok!r} after a complete expression")
        if tok in OPERATORS:
            stack.append((tok, []))
            continue
        if tok == END:
            if not stack:
                raise ValueError("']' without an open operator")
            op, args = stack.pop()
            if not args:
                raise ValueError(f"operator {op} has no arguments")
            value = _apply(op, args)
        elif tok.isdigit() and len(tok) == 1:
            value = int(tok)
        else:
            raise ValueError(f"unknown ListOps token {tok!r}; valid: {VOCAB[:-1]}")
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    if stack or result is None:
        raise ValueError("incomplete ListOps expression")
    return result


@dataclasses.dataclass
class ListOpsConfig(tfds.core.BuilderConfig):
    num_train: int = 96_000
    num_validation: int = 2_000
    num_test: int = 2_000
    min_length: int = 500
    max_length: int = 2_000


class TjaxListops(LocalBuilder):
    """tfds builder for ListOps; configs 'default' (LRA sizes), 'small' and 'tiny'."""

    VERSION = tfds.core.Version("1.0.0")

    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ListOpsConfig(name="default", description="LRA sizes: 96k/2k/2k, lengths 500-2000."),
        ListOpsConfig(
            name="small",
            description="2k/200/200, lengths 500-2000, for CPU runs.",
            num_train=2_000,
            num_validation=200,
            num_test=200,
        ),
        ListOpsConfig(
            name="tiny",
            description="200/50/50, lengths 50-200: for tests only, not LRA.",
            num_train=200,
            num_validation=50,
            num_test=50,
            min_length=50,
            max_length=200,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=10)}
            ),
            supervised_keys=("text", "label"),
            homepage="https://github.com/google-research/long-range-arena",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        stream = generate(
            cfg.num_test + cfg.num_validation + cfg.num_train,
            min_length=cfg.min_length,
            max_length=cfg.max_length,
        )
        examples = list(stream)
        a, b = cfg.num_test, cfg.num_test + cfg.num_validation
        return {
            "test": self._generate_examples(examples[:a]),
            "validation": self._generate_examples(examples[a:b]),
            "train": self._generate_examples(examples[b:]),
        }

    def _generate_examples(self, examples) -> Iterator[tuple[int, dict]]:
        for i, (text, label) in enumerate(examples):
            yield i, {"text": text, "label": label}
