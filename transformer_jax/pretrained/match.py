"""Which stored tensors fill which rows of a head's table, and the report of what was left over.

A checkpoint of one head (say `BertForMaskedLM`) may load under another (`question_answering`):
the backbone's tensors match by name once the backbone prefix (`bert.`) is set aside; the head's
own tensors the checkpoint lacks start fresh, and stored tensors the head does not use are dropped.
Both lists are reported. A backbone tensor that is missing, or a stored tensor no head of the
family knows, is still an error: that is a checkpoint that does not match its config.json.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from transformer_jax.pretrained.families import Family
from transformer_jax.pretrained.tensors import Tensor


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `from_pretrained` did with a checkpoint's tensors (`return_report=True`)."""

    directory: str
    architecture: str  # the checkpoint's, from config.json
    head: str  # the head it was loaded as
    loaded: tuple[str, ...]  # stored tensor names that were read
    fresh: tuple[str, ...]  # the head's tensors (its architecture's names) initialised afresh
    dropped: tuple[str, ...]  # stored tensors the head does not use

    def __str__(self) -> str:
        lines = [f"{self.directory}: {self.architecture} loaded as head={self.head!r} "
                 f"({len(self.loaded)} tensors read)"]
        if self.fresh:
            lines.append(f"  initialised afresh (not in the checkpoint): {', '.join(self.fresh)}")
        if self.dropped:
            lines.append(f"  dropped (not used by this head): {', '.join(self.dropped)}")
        return "\n".join(lines)


def backbone_names(family: Family, cfg) -> set[str]:
    """Canonical names every architecture of the family holds: the backbone."""
    tables = [{family.canonical(r.name) for r in family.tensors(cfg, a)} for a in family.architectures]
    return set.intersection(*tables)


def known_names(family: Family, cfg) -> set[str]:
    """Canonical names (and aliases) any architecture of the family holds."""
    return {family.canonical(n) for a in family.architectures for r in family.tensors(cfg, a)
            for n in (r.name, *r.aliases)}


def _listed(names: list[str]) -> str:
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")


def match(table: list[Tensor], stored: set[str], family: Family, cfg, directory: Path,
          strict: bool) -> tuple[dict[str, str], list[str], list[str]]:
    """(row name -> stored name to read, fresh row names, dropped stored names).

    `strict` (the checkpoint's own architecture): every row must be stored. Otherwise only rows of
    the backbone must be; the head's rows the checkpoint lacks are fresh.
    """
    by_canonical = {family.canonical(n): n for n in stored}
    backbone = backbone_names(family, cfg)
    chosen, fresh, missing = {}, [], []
    for row in table:
        found = next((by_canonical[c] for c in (family.canonical(n) for n in (row.name, *row.aliases))
                      if c in by_canonical), None)
        if found is not None:
            chosen[row.name] = found
        elif strict or family.canonical(row.name) in backbone:
            missing.append(row.name)
        else:
            fresh.append(row.name)
    used = {family.canonical(n) for row in table for n in (row.name, *row.aliases)}
    known = known_names(family, cfg)
    dropped, unexpected = [], []
    for name in sorted(stored - set(chosen.values())):
        canonical = family.canonical(name)
        if canonical in used or any(re.fullmatch(p, name) for p in family.ignored):
            continue  # an alias of a tensor already read, or a buffer
        if canonical in known or any(re.fullmatch(p, name) for p in family.unused):
            dropped.append(name)
        else:
            unexpected.append(name)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected tensor(s): {_listed(unexpected)}")
        raise ValueError(f"{directory}: the checkpoint does not match its config.json ({family.name}): "
                         + "; ".join(parts))
    return chosen, fresh, dropped
