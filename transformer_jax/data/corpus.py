"""The built-in text corpus, ``tjax_text``: English prose that ships with Python, no download.

Two sources, both in every CPython installation:

* the Python Language Reference as `help()` shows it (``pydoc_data.topics``: "The if statement",
  "Data model", ...), label 0 ("reference");
* the docstrings of about a hundred standard-library modules and their public classes, functions
  and methods (``inspect.getdoc``), label 1 ("library").

Each example is one prose paragraph (code blocks, grammar rules, doctests and headings are left
out; lines are joined; duplicates dropped), about 2,600 paragraphs and 0.5 MB of text. The label
(which of the two documents a paragraph comes from) makes it a small classification task too.
Splits are by a hash of the text: 1/20 test, 1/20 validation, the rest train, so a paragraph keeps
its split when the corpus changes. The text depends on the Python version it is built with (3.11
here); the version is in the dataset description.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import zlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from transformer_jax.data.local_builder import LocalBuilder

LABELS = ("reference", "library")
MODULES = tuple("""abc argparse ast asyncio base64 bisect bz2 calendar cmd codecs collections colorsys
configparser contextlib copy csv dataclasses datetime decimal difflib email enum filecmp fnmatch
fractions ftplib functools getopt gettext glob graphlib gzip hashlib heapq hmac html http.client
imaplib inspect io ipaddress itertools json keyword linecache locale logging lzma mailbox mimetypes
numbers operator optparse os pathlib pickle pkgutil platform plistlib poplib pprint queue quopri
random re reprlib sched secrets selectors shelve shlex shutil signal smtplib socket socketserver
statistics string struct subprocess tarfile tempfile textwrap threading timeit tokenize trace
traceback types typing unittest urllib.parse urllib.request uuid warnings wave weakref
xml.dom.minidom zipfile zlib""".split())
MIN_CHARS = 60


def prose(text: str) -> Iterator[str]:
    """The prose paragraphs of a reST-ish text: indented blocks (code, grammar, doctests) and
    underlined headings are skipped; lines are joined with spaces."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip("\n").split("\n")
        if any(line.startswith((" ", "\t", ">>>")) for line in lines):
            continue
        if len(lines) > 1 and re.fullmatch(r"[*=\-^~]+", lines[-1].strip()):
            continue
        paragraph = " ".join(line.strip() for line in lines).strip()
        if len(paragraph) >= MIN_CHARS and re.search(r"[a-z]{3} [a-z]{2}", paragraph):
            yield paragraph


def _docstrings(module) -> Iterator[str]:
    yield inspect.getdoc(module) or ""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("_") and inspect.isfunction(member):
                    yield inspect.getdoc(member) or ""


def paragraphs() -> list[tuple[str, int]]:
    """(paragraph, label) pairs, first occurrence of each paragraph only, in a fixed order."""
    import pydoc_data.topics

    out: dict[str, int] = {}
    for topic in sorted(pydoc_data.topics.topics):
        for p in prose(pydoc_data.topics.topics[topic]):
            out.setdefault(p, 0)
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a module this build of Python lacks
            continue
        for doc in _docstrings(module):
            for p in prose(doc):
                out.setdefault(p, 1)
    return list(out.items())


def split_of(text: str) -> str:
    bucket = zlib.crc32(text.encode("utf-8")) % 20
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


class TjaxText(LocalBuilder):
    """tfds builder for the built-in corpus; prepared locally from the running Python, no download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{__doc__}\nBuilt with Python {sys.version.split()[0]}.",
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=LABELS)}),
            supervised_keys=("text", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        splits: dict[str, list] = {"train": [], "validation": [], "test": []}
        for text, label in paragraphs():
            splits[split_of(text)].append((text, label))
        return {name: self._generate_examples(rows) for name, rows in splits.items()}

    def _generate_examples(self, rows):
        for i, (text, label) in enumerate(rows):
            yield i, {"text": text, "label": label}
