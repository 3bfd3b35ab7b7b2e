"""The user's own files as a Grain random-access source: JSON Lines, JSON, CSV, TSV, plain text.

A caller (a task) names the *roles* it reads -- ``text``, ``text_pair``, ``label``, ``tokens``,
``tags``, ``question``, ``context``, ``answers``, ``id``, ``title``, ``source``, ``target``,
``prompt``, ``response`` -- and this module finds each role's column (``columns`` or the defaults
in ``data.records``, which follow the reference library's datasets), checks every row of every file once, up
front, and then reads rows at random through a byte-offset index (JSON Lines, CSV, TSV, text; a
JSON document has no line structure, so it is parsed whole). A built-in dataset's split,
``"tjax_pairs:train"``, stands for its generated JSON Lines file (``data.builtin_files``).

Returns:
  ``open_files(files, roles, ...) -> FileSource``; ``FileSource[i]`` is a dict keyed by role:
    text roles (text, text_pair, question, context, source, target, prompt, response, id, title): str
    label:   int class id (``labels`` given) or float (regression, ``labels=None``)
    tokens:  list[str];  tags: list[int] class ids, one per token
    answers: {"text": list[str], "answer_start": list[int]}  (the reference library's SQuAD layout)
  ``len(source)``; ``source.where(i) -> (path, line)``; it is picklable and satisfies
  ``grain.sources.RandomAccessDataSource``.
  ``derive_labels(files, role) -> tuple[str, ...] | None``: the sorted label set (id order) of the
  train files, or None when the labels are numbers that are not all integers (regression).
  ``grain_dataset(source, seed=, num_epochs=, shard_index=, shard_count=) -> grain.MapDataset``
  : seeded shuffle (a new order each epoch), epochs, a strided shard per process (as
  ``data.pipeline``); the iterator's ``get_state()`` resumes exactly.

Formats, chosen by extension:
  .jsonl     one JSON object per line (blank lines skipped); a .json file that holds JSON Lines too
  .json      a list of records; ``{"data": [records]}``; or SQuAD v1.1's nested
             ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
             "answers": [{"text", "answer_start"}]}]}]}]}``, flattened to one record per question
  .csv       a header row, then records (RFC 4180 quoting; quoted fields may span lines)
  .tsv       a header row, then one record per line, fields split on tabs, no quoting
  .txt       one record per non-blank line, role ``text``
In CSV/TSV cells, ``tokens``/``tags`` are split on whitespace (or read as a JSON list when the cell
starts with ``[``), ``answers`` is JSON, and a ``label`` that reads as a number becomes one.

Every problem is a ``ValueError`` naming the file and the line (and the column, the value and what
is valid): an empty file, a missing column, a label not in the label set, non-UTF-8 bytes, a QA
answer not found at its ``answer_start``, malformed JSON, a row with the wrong number of fields,
tags and tokens of different lengths.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import glob
import json
import mmap
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from transformer_jax.data import builtin_files
from transformer_jax.data.records import DEFAULT_COLUMNS, ROLES, RowError, RowReader, check_roles, resolve_columns

__all__ = ["DEFAULT_COLUMNS", "ROLES", "FileSource", "derive_labels", "expand", "file_format", "grain_dataset",
           "open_files"]

FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".txt": "text", ".text": "text"}

# ----------------------------------------------------------------------------
# Finding files and their format


def expand(files: str | Sequence[str], data_dir: str | os.PathLike | None = None) -> list[str]:
    """Paths or globs (a string may hold several, comma-separated) -> existing files, in order.

    A built-in dataset's split, ``"tjax_pairs:train"`` or ``"tjax_entities/tiny:validation"``, names
    its JSON Lines file (``builtin_files.builtin_file``, written under ``data_dir`` on first use).
    """
    patterns = [p.strip() for p in files.split(",")] if isinstance(files, str) else list(files)
    out: list[str] = []
    for pattern in filter(None, patterns):
        pattern = os.path.expanduser(os.fspath(pattern))
        dataset, colon, split = pattern.rpartition(":")
        if colon and builtin_files.is_builtin(dataset) and not os.path.exists(pattern):
            out.append(builtin_files.builtin_file(dataset, split, data_dir))
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not found:
                raise ValueError(f"no file matches {pattern!r}")
            out.extend(found)
        elif os.path.isfile(pattern):
            out.append(pattern)
        else:
            raise ValueError(f"{pattern}: no such file")
    if not out:
        raise ValueError(f"no files given (files={files!r})")
    return out


def file_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unknown file type {ext!r}; valid: {', '.join(FORMATS)}")
    if FORMATS[ext] == "json" and _is_json_lines(path):
        return "jsonl"
    return FORMATS[ext]


def _is_json_lines(path: str) -> bool:
    """A .json file whose first non-blank line is a whole JSON object (and the file has more)."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    return False
                more = bool(f.read(1 << 16).strip())
                return isinstance(first, dict) and ("data" not in first or more)
    return False


# ----------------------------------------------------------------------------
# Byte-level reading: UTF-8 check and the index of records


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[mmap.mmap]:
    """The file's bytes, memory-mapped (read on demand, not loaded), unmapped afterwards."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file (no records)")
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield buf
    finally:
        with contextlib.suppress(BufferError):  # a NumPy view still alive: the GC unmaps it
            buf.close()


def _decode(buf, path: str, start: int, end: int, line: int) -> str:
    try:
        text = bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError as e:
        bad = bytes(buf[start + e.start:start + e.start + 4])
        raise ValueError(
            f"{path}, line {line}: byte {e.start + 1} of the line is not UTF-8 ({bad!r}); "
            "save the file as UTF-8"
        ) from None
    return text.lstrip("\ufeff") if start == 0 else text


def _line_spans(buf, *, quoted: bool) -> Iterator[tuple[int, int, int]]:
    """(start, end, first line number) of each non-blank record; ``quoted``: CSV records continue
    over newlines inside double quotes."""
    nl = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)
    ends = np.append(nl, len(buf))
    start, line, record_line, open_quotes = 0, 1, 1, False
    rec_start = 0
    for end in ends.tolist():
        if quoted:
            if buf[start:end].count(b'"') % 2:
                open_quotes = not open_quotes
            if open_quotes:
                start, line = end + 1, line + 1
                continue
        if buf[rec_start:end].strip():
            yield rec_start, end, record_line
        start, line = end + 1, line + 1
        rec_start, record_line = start, line
    if open_quotes:  # an unclosed quote runs to the end of the file: let the CSV parser name it
        yield rec_start, len(buf), record_line


# ----------------------------------------------------------------------------
# The source


class FileSource:
    """Random access to the rows of one or more files, as role-keyed records (see the module doc).

    Build it with ``open_files``. Every row was checked when it was built; ``__getitem__`` reads one
    row's bytes with ``os.pread`` (thread-safe, no shared file position) and converts it again.
    """

    def __init__(self, files: tuple[str, ...], formats: tuple[str, ...], readers: tuple[RowReader, ...],
                 headers: dict[int, list[str]], memory: dict[int, list[dict]], index: np.ndarray):
        self.files, self.formats, self.readers = files, formats, readers
        self._headers = headers  # CSV/TSV files: their header row
        self._memory = memory  # JSON files: their records, converted
        self._index = index  # int64 [N, 4]: file, start byte (record number for JSON), end byte, line
        self._fds: dict[int, int] = {}

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.readers[0].labels

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"FileSource(files={list(self.files)!r}, columns={[dict(r.columns) for r in self.readers]!r})"

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fds"}

    def __setstate__(self, state):
        self.__dict__.update(state, _fds={})

    def where(self, i: int) -> tuple[str, int]:
        f, _, _, line = self._index[i].tolist()
        return self.files[f], line

    def __getitem__(self, i: int) -> dict[str, Any]:
        f, start, end, line = self._index[i].tolist()
        if f in self._memory:
            return copy.deepcopy(self._memory[f][start])
        fd = self._fds.get(f)
        if fd is None:
            fd = self._fds[f] = os.open(self.files[f], os.O_RDONLY)
        text = os.pread(fd, end - start, start).decode("utf-8").lstrip("\ufeff")
        return _read(self.readers[f], _parse(text, self.formats[f], self._headers.get(f), self.files[f], line),
                     self.files[f], line)


def _read(reader: RowReader, row: Mapping[str, Any], path: str, line: int) -> dict[str, Any]:
    try:
        return reader.read(row)
    except RowError as e:
        raise ValueError(f"{path}, line {line}: {e}") from None


def _parse(text: str, fmt: str, header: list[str] | None, path: str, line: int) -> dict[str, Any]:
    """One record's text -> its row (column -> value)."""
    if fmt == "text":
        return {"text": text.rstrip("\r\n")}
    if fmt == "jsonl":
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {line}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {line}: a JSON {type(row).__name__}; each line must be an object")
        return row
    try:
        cells = _split_row(text, fmt)
    except RowError as e:
        raise ValueError(f"{path}, line {line}: {e}") from None
    if len(cells) != len(header):
        raise ValueError(f"{path}, line {line}: {len(cells)} fields, but the header has {len(header)} "
                         f"({', '.join(header)})")
    return dict(zip(header, cells))


def _split_row(text: str, fmt: str) -> list[str]:
    text = text.rstrip("\r\n")
    if fmt == "tsv":
        return [c.rstrip("\r") for c in text.split("\t")]
    if not text:
        return []
    try:
        rows = list(csv.reader(text.splitlines(keepends=True), strict=True))
    except csv.Error as e:
        raise RowError(f"malformed CSV ({e})") from None
    if len(rows) != 1:
        raise RowError(f"malformed CSV: one record reads as {len(rows)} rows (an unbalanced quote?)")
    return rows[0]


# ----------------------------------------------------------------------------
# Opening: columns, index, validation


def _decode_file(buf, path: str) -> str:
    try:
        return bytes(buf).decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        line = bytes(buf[:e.start]).count(b"\n") + 1
        column = e.start - bytes(buf[:e.start]).rfind(b"\n")
        raise ValueError(f"{path}, line {line}: byte {column} of the line is not UTF-8 "
                         f"({bytes(buf[e.start:e.start + 4])!r}); save the file as UTF-8") from None


def _json_records(path: str) -> tuple[list[dict], list[tuple], str]:
    """A JSON document -> (records, the JSON path of each, for error lines, and its text)."""
    with _mapped(path) as buf:
        text = _decode_file(buf, path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        if doc["data"] and isinstance(doc["data"][0], dict) and "paragraphs" in doc["data"][0]:
            return (*_flatten_squad(doc["data"], path), text)
        doc, prefix = doc["data"], ("data",)
    elif isinstance(doc, list):
        prefix = ()
    else:
        raise ValueError(f"{path}, line 1: expected a list of records, {{'data': [records]}} or SQuAD's "
                         f"{{'data': [{{'title', 'paragraphs'}}]}}; got a JSON {type(doc).__name__}")
    for i, r in enumerate(doc):
        if not isinstance(r, dict):
            raise ValueError(f"{path}, line {json_line(text, (*prefix, i))}: record {i} is a JSON "
                             f"{type(r).__name__}; expected an object")
    return doc, [(*prefix, i) for i in range(len(doc))], text


def _flatten_squad(articles, path):
    records, where = [], []
    try:
        for a, article in enumerate(articles):
            for p, para in enumerate(article["paragraphs"]):
                for q, qa in enumerate(para["qas"]):
                    records.append({"id": qa["id"], "title": article.get("title", ""), "context": para["context"],
                                    "question": qa["question"], "answers": qa.get("answers", [])})
                    where.append(("data", a, "paragraphs", p, "qas", q))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not SQuAD v1.1 layout near data[{a}] ({type(e).__name__}: {e}); expected "
                         "data[].paragraphs[].{context, qas[].{id, question, answers[].{text, answer_start}}}") from None
    return records, where


def json_line(text: str, path: tuple) -> int:
    """The line on which the value at ``path`` (keys and indices) of the JSON ``text`` starts."""
    dec, pos = json.JSONDecoder(), 0
    ws = re.compile(r"[\s,:]*")
    for step in path:
        pos = ws.match(text, pos).end()
        opener = text[pos]
        pos += 1
        k = 0
        while True:
            pos = ws.match(text, pos).end()
            if opener == "{":
                key, pos = dec.raw_decode(text, pos)
                pos = ws.match(text, pos).end()
                if key == step:
                    break
            elif k == step:
                break
            _, pos = dec.raw_decode(text, pos)
            k += 1
    pos = ws.match(text, pos).end()
    return text.count("\n", 0, pos) + 1


def open_files(
    files: str | Sequence[str],
    roles: Sequence[str],
    *,
    optional: Sequence[str] = (),
    columns: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> FileSource:
    """Every row of ``files`` (paths or globs), checked, as a random-access source of role records.

    Args:
      files: paths or globs (a list, or one comma-separated string), or built-in splits
        (``"tjax_questions:train"``, see ``expand``; ``data_dir`` is where they are written).
      roles: the roles every row must have (``("text", "label")``).
      optional: roles read when their column is present (``("text_pair",)``); a column found in a
        file's first row must then be in every row.
      columns: role -> column name, overriding ``DEFAULT_COLUMNS``.
      labels: the label set in id order, for the ``label`` or ``tags`` role (from
        ``derive_labels`` on the train files); None with ``label``: regression (numbers).
    """
    columns = dict(columns or {})
    roles, optional = tuple(roles), tuple(r for r in optional if r not in roles)
    check_roles(roles, optional, columns)
    if "tags" in (*roles, *optional) and labels is None:
        raise ValueError("the 'tags' role needs labels=(the tag set); derive it with derive_labels(train_files, 'tags')")
    labels = tuple(str(x) for x in labels) if labels is not None else None
    return _open(expand(files, data_dir), roles, optional, columns, labels, raw_labels=False)


def _open(paths, roles, optional, columns, labels, raw_labels) -> FileSource:
    formats = tuple(map(file_format, paths))
    readers, headers, memory, index = [], {}, {}, []
    for f, (path, fmt) in enumerate(zip(paths, formats)):
        reader, header, records, spans = _index_file(path, fmt, roles, optional, columns, labels, raw_labels)
        readers.append(reader)
        if header is not None:
            headers[f] = header
        if records is not None:
            memory[f] = records
        index.append(np.concatenate([np.full((len(spans), 1), f), spans], 1))
    return FileSource(tuple(paths), formats, tuple(readers), headers, memory, np.concatenate(index).astype(np.int64))


def _index_file(path, fmt, roles, optional, columns, labels, raw_labels):
    """Checks every row of one file. Returns (its reader, its header or None, its converted records
    (JSON) or None, [n, 3] int64 start, end, line of each record)."""
    def reader_for(keys):
        cols = {"text": "text"} if fmt == "text" else resolve_columns(path, keys, roles, optional, columns)
        return RowReader(cols, labels, cells=fmt in ("csv", "tsv"), raw_labels=raw_labels)

    if fmt == "json":
        records, where, text = _json_records(path)
        if not records:
            raise ValueError(f"{path}: empty file (no records)")
        reader = reader_for(records[0].keys())
        converted = []
        for r, at in zip(records, where):
            try:
                converted.append(reader.read(r))
            except RowError as e:
                raise ValueError(f"{path}, line {json_line(text, at)}: {e}") from None
        n = len(converted)
        return reader, None, converted, np.stack([np.arange(n), np.zeros(n, np.int64), np.zeros(n, np.int64)], 1)
    with _mapped(path) as buf:
        return _index_lines(buf, path, fmt, roles, reader_for)


def _index_lines(buf, path, fmt, roles, reader_for):
    """The line-based formats: every record decoded and checked; its span and first line kept."""
    spans = list(_line_spans(buf, quoted=fmt == "csv"))
    header = None
    if fmt in ("csv", "tsv"):
        if not spans:
            raise ValueError(f"{path}: empty file (no header, no records)")
        start, end, line = spans.pop(0)
        try:
            header = _split_row(_decode(buf, path, start, end, line), fmt)
        except RowError as e:
            raise ValueError(f"{path}, line {line}: {e}") from None
        if len(set(header)) != len(header):
            raise ValueError(f"{path}, line {line}: repeated column names in the header {header}")
    if not spans:
        raise ValueError(f"{path}: empty file (no records)")
    if fmt == "text" and set(roles) - {"text"}:
        raise ValueError(f"{path}: a plain-text file has only the role 'text'; this needs {list(roles)}")
    reader = None
    for start, end, line in spans:
        row = _parse(_decode(buf, path, start, end, line), fmt, header, path, line)
        reader = reader or reader_for(row.keys())
        _read(reader, row, path, line)
    return reader, header, None, np.array(spans, np.int64)


# ----------------------------------------------------------------------------
# Labels


def derive_labels(files: str | Sequence[str], role: str = "label", *, columns: Mapping[str, str] | None = None,
                  data_dir: str | os.PathLike | None = None) -> tuple[str, ...] | None:
    """The sorted set of ``role``'s values (``label``, or ``tags`` flattened) over ``files``: the
    label names in id order (``id2label = dict(enumerate(names))``), as the reference library's
    ``run_glue``/``run_ner`` build them. Integers sort as numbers and are named by their digits.
    None when the values are numbers that are not all integers: a regression target.
    """
    if role not in ("label", "tags"):
        raise ValueError(f"derive_labels reads the role 'label' or 'tags', got {role!r}")
    columns = {k: v for k, v in (columns or {}).items() if k == role}
    src = _open(expand(files, data_dir), (role,), (), columns, None, raw_labels=True)
    values: set = set()
    for i in range(len(src)):
        v = src[i][role]
        for x in (v if role == "tags" else [v]):
            if isinstance(x, bool) or not isinstance(x, (str, int, float)):
                path, line = src.where(i)
                raise ValueError(f"{path}, line {line}: label {x!r} is a {type(x).__name__}; expected a name or a number")
            values.add(int(x) if isinstance(x, float) and x.is_integer() else x)
    if any(isinstance(v, float) for v in values) and all(not isinstance(v, str) for v in values):
        return None
    numbers = sorted(v for v in values if not isinstance(v, str))
    return tuple(str(v) for v in numbers) + tuple(sorted(v for v in values if isinstance(v, str)))


# ----------------------------------------------------------------------------
# Grain


def grain_dataset(source, *, seed: int, num_epochs: int | None = 1, shuffle: bool = True,
                  shard_index: int = 0, shard_count: int = 1, drop_remainder: bool = False) -> grain.MapDataset:
    """``source`` as a Grain MapDataset: this process's shard (records shard_index, shard_index +
    shard_count, ...), shuffled by ``seed`` (a new order each epoch), repeated ``num_epochs`` times
    (None: forever). ``drop_remainder`` first cuts the source to a multiple of ``shard_count`` so
    every process has as many records (equal step counts across hosts).

    Iterate ``ds.to_iter_dataset()``; its iterator's ``get_state()``/``set_state()`` resume exactly.
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs} must be >= 1 (or None: forever)")
    ds = grain.MapDataset.source(source)
    if drop_remainder:
        ds = ds[: len(ds) - len(ds) % shard_count]
    ds = ds[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard_index} of {shard_count} has no records ({len(source)} records in all)")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds if num_epochs == 1 else ds.repeat(num_epochs)

