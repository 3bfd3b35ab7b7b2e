"""One row of a user's file -> a record keyed by role, checked (the per-row half of ``data.files``).

Roles are what a task reads (``text``, ``label``, ``tokens``, ``answers``, ...); ``DEFAULT_COLUMNS``
says which columns hold them when the user names none, after the reference library's datasets.

Returns:
  ``resolve_columns(path, keys, roles, optional, columns) -> dict[role, column]`` for one file.
  ``RowReader(columns, labels, cells).read(row) -> dict[role, value]``: text roles as str, ``label``
    as an int id (or a float for regression), ``tokens`` list[str], ``tags`` list[int],
    ``answers`` {"text": [...], "answer_start": [...]}; raises ``RowError`` (the caller adds the file
    and line) for a missing column, a label outside the label set, a malformed value, tags and
    tokens of different lengths, or an answer not at its ``answer_start``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

# Role -> column names tried in order (the first present in a file is used).
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("text", "sentence", "sentence1"),
    "text_pair": ("sentence2", "text_pair"),
    "label": ("label", "labels"),
    "tokens": ("tokens", "words"),
    "tags": ("ner_tags", "tags"),
    "question": ("question",),
    "context": ("context",),
    "answers": ("answers",),
    "id": ("id",),
    "title": ("title",),
    "source": ("source", "document", "article"),
    "target": ("target", "summary", "highlights"),
    "prompt": ("prompt", "instruction"),
    "response": ("response", "completion", "output"),
}
ROLES = tuple(DEFAULT_COLUMNS)
TEXT_ROLES = ("text", "text_pair", "question", "context", "id", "title", "source", "target", "prompt", "response")




class RowError(ValueError):
    """A problem with one row; the caller adds the file and line."""


def _number(cell: str):
    if re.fullmatch(r"[+-]?\d+", cell.strip()):
        return int(cell)
    try:
        return float(cell)
    except ValueError:
        return cell


def _from_cell(role: str, value: Any) -> Any:
    """CSV/TSV cells are strings: lists, answers and numeric labels are read from them."""
    if not isinstance(value, str):
        return value
    if role in ("tokens", "tags"):
        return json.loads(value) if value.lstrip().startswith("[") else value.split()
    if role == "answers":
        return json.loads(value)
    if role == "label":
        return _number(value)
    return value


def _label_id(value, label2id: Mapping[str, int], names: tuple[str, ...], column: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"column {column!r}: label {value!r} is a {type(value).__name__}; expected a name or an id")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if str(value) in label2id:
        return label2id[str(value)]
    if isinstance(value, int) and not any(_is_int(n) for n in names) and 0 <= value < len(names):
        return value  # an id into names (the reference library's ClassLabel ints)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise RowError(f"column {column!r}: label {value!r} is not in the label set ({shown})")


def _is_int(s: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", s))


def _answers(value, context: str | None, column: str) -> dict[str, list]:
    """Either layout -> {"text": [...], "answer_start": [...]}, each answer found at its start."""
    if isinstance(value, list):  # SQuAD's [{"text", "answer_start"}]
        try:
            value = {"text": [a["text"] for a in value], "answer_start": [a["answer_start"] for a in value]}
        except (TypeError, KeyError):
            raise RowError(f"column {column!r}: answers {value!r} must be objects with 'text' and 'answer_start'") from None
    if not isinstance(value, dict) or not {"text", "answer_start"} <= value.keys():
        raise RowError(
            f"column {column!r}: answers {value!r} must be {{'text': [...], 'answer_start': [...]}} "
            "or a list of {'text', 'answer_start'}")
    texts, starts = value["text"], value["answer_start"]
    texts = [texts] if isinstance(texts, str) else list(texts)
    starts = [starts] if isinstance(starts, int) else list(starts)
    if len(texts) != len(starts):
        raise RowError(f"column {column!r}: {len(texts)} answer texts but {len(starts)} answer_start values")
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise RowError(f"column {column!r}: answer {text!r} at {start!r}: need a string and an integer start")
        if context is not None and context[start:start + len(text)] != text:
            found = context.find(text)
            where = f"the text occurs at {found}" if found >= 0 else "the text is not in the context"
            raise RowError(
                f"answer {text!r} is not found at answer_start={start} of the context (which reads "
                f"{context[start:start + len(text)]!r} there; {where})")
    return {"text": texts, "answer_start": starts}


@dataclasses.dataclass(frozen=True)
class RowReader:
    """How one file's rows become records: its columns (role -> column), the label set in id
    order (None: ``label`` is a regression number), whether values are CSV/TSV strings (``cells``),
    and ``raw_labels`` (labels passed through unchecked, for deriving the label set)."""

    columns: Mapping[str, str]
    labels: tuple[str, ...] | None = None
    cells: bool = False
    raw_labels: bool = False

    @functools.cached_property
    def _label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.labels or ())}

    def read(self, row: Mapping[str, Any]) -> dict[str, Any]:
        cols, label2id = self.columns, self._label2id
        out: dict[str, Any] = {}
        for role, column in cols.items():
            if column not in row:
                raise RowError(f"missing column {column!r} (role {role!r}); the row has {sorted(row)}")
            value = _from_cell(role, row[column]) if self.cells else row[column]
            out[role] = self._value(role, value, column, row, label2id)
        if "tags" in out and "tokens" in out and len(out["tags"]) != len(out["tokens"]):
            raise RowError(f"{len(out['tokens'])} tokens but {len(out['tags'])} tags (column {cols['tags']!r})")
        return out

    def _value(self, role, value, column, row, label2id):
        if role in TEXT_ROLES:
            if role == "id" and isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            if not isinstance(value, str):
                raise RowError(f"column {column!r}: {value!r} is a {type(value).__name__}; expected text")
            return value
        if role in ("tokens", "tags") and not isinstance(value, list):
            raise RowError(f"column {column!r}: {value!r} must be a list")
        if role in ("label", "tags") and self.raw_labels:
            return value
        if role == "label":
            if self.labels is not None:
                return _label_id(value, label2id, self.labels, column)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RowError(f"column {column!r}: regression label {value!r} must be a finite number "
                               "(no label set was given)")
            return float(value)
        if role == "tokens":
            if not all(isinstance(t, str) for t in value):
                raise RowError(f"column {column!r}: tokens must be strings")
            return value
        if role == "tags":
            return [_label_id(t, label2id, self.labels or (), column) for t in value]
        if role == "answers":
            context = row.get(self.columns["context"]) if "context" in self.columns else None
            return _answers(value, context if isinstance(context, str) else None, column)
        raise AssertionError(role)


def resolve_columns(path, first_row_keys, roles, optional, columns) -> dict[str, str]:
    keys = set(first_row_keys)
    out: dict[str, str] = {}
    for role in (*roles, *optional):
        if role in columns:
            name = columns[role]
            if name in keys:
                out[role] = name
            elif role in roles:
                raise ValueError(f"{path}, line 1: missing column {name!r} (role {role!r}, set by columns); "
                                 f"the file has {sorted(keys)}")
            continue
        name = next((c for c in DEFAULT_COLUMNS[role] if c in keys and c not in out.values()), None)
        if name is not None:
            out[role] = name
        elif role in roles:
            raise ValueError(
                f"{path}, line 1: missing column for role {role!r}: tried {list(DEFAULT_COLUMNS[role])}; the file "
                f"has {sorted(keys)}; name it with --config.data.columns (e.g. {role}=<column>)")
    return out


def check_roles(roles, optional, columns):
    for role in (*roles, *optional, *columns):
        if role not in DEFAULT_COLUMNS:
            raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
