"""Counters for bad or unusual data met on the way from a record to a batch.

Nothing in the input pipeline raises on bad text: empty strings, over-long
examples, invalid UTF-8 and characters the vocabulary cannot represent are
handled and counted here, so a run can report how much of its data was odd.
"""

from __future__ import annotations

import dataclasses
import threading

_FIELDS = (
    "examples",  # records read and tokenized
    "empty",  # an input or target text was empty (kept; it becomes EOS only)
    "truncated",  # over-long texts cut to the maximum length (per text, not example)
    "filtered_too_long",  # over-long examples dropped
    "invalid_utf8",  # texts (or decoded id runs) that were not valid UTF-8
    "unknown_tokens",  # tokens mapped to UNK (id 3)
)


@dataclasses.dataclass
class DataStats:
    """Thread-safe counters; grain may call the map functions from worker threads.

    Counts are per process and not part of the iterator state: after a restore
    they start from zero. Prefetching means a few examples not yet seen by the
    trainer may already be counted.
    """

    examples: int = 0
    empty: int = 0
    truncated: int = 0
    filtered_too_long: int = 0
    invalid_utf8: int = 0
    unknown_tokens: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                if name not in _FIELDS:
                    raise ValueError(f"DataStats has no counter {name!r}; valid: {_FIELDS}")
                setattr(self, name, getattr(self, name) + int(n))

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in _FIELDS}

    def __getstate__(self):  # picklable for grain worker processes
        return self.as_dict()

    def __setstate__(self, state):
        self.__init__(**state)
