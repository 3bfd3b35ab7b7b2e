"""A built-in tokenizer (byte, SentencePiece, word) called like a checkpoint's fast tokenizer, so the
fine-tuning tasks read text one way whichever tokenizer a run has.

    tok = Framed(SentencePieceTokenizer(path), "encoder")
    tok(["a question"], ["its context"], truncation="only_second", max_length=64, stride=16,
        return_overflowing_tokens=True, return_offsets_mapping=True)   # QA windows, as a BERT tokenizer
    tok([["Paul", "lives", "here"]], is_split_into_words=True)["word_ids"]

`framing` puts the library's reserved ids where a checkpoint puts its special tokens (ids 0 pad,
1 EOS, 2 BOS; config.py):

  "encoder"  (BERT)   [BOS] A [EOS]  /  [BOS] A [EOS] B [EOS]   token types 0 ... 0 1 ... 1
  "seq2seq"  (T5)     A [EOS]        /  A [EOS] B [EOS]
  "decoder"  (Llama)  [BOS] A        /  [BOS] A B

Returns (lists per row; one row per input, or per window with overflow): ``input_ids``,
``token_type_ids``, ``attention_mask``, ``word_ids`` and ``sequence_ids`` (None at special tokens),
``offset_mapping`` (on request: character spans into each text, (0, 0) at special tokens, whitespace
trimmed), ``overflow_to_sample_mapping`` (with overflow). Truncation: ``True``/"longest_first"
(a pair's shorter text keeps at most half the room, the longer the rest), "only_second"; with
``return_overflowing_tokens`` the cut text (the second, or a single text) is split into windows
overlapping by ``stride`` tokens, as the reference library's fast tokenizers do. No padding (the
tasks' layout pads). Stateless, so safe to call from Grain's threads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformer_jax.config import BOS_ID, EOS_ID

FRAMINGS = {  # (before A, between A and B, after B or after a single A)
    "encoder": ((BOS_ID,), (EOS_ID,), (EOS_ID,)),
    "seq2seq": ((), (EOS_ID,), (EOS_ID,)),
    "decoder": ((BOS_ID,), (), ()),
}
TRUNCATIONS = (True, False, None, "longest_first", "only_second", "do_not_truncate")


@dataclasses.dataclass(frozen=True)
class Piece:
    """One token: its id, its word (a pre-split input's word index, else None) and its character span."""

    id: int
    word: int | None
    start: int
    end: int


def _pieces(base, text, is_split_into_words: bool) -> list[Piece]:
    if not is_split_into_words:
        return [Piece(i, None, s, e) for i, (s, e) in zip(*base.encode_with_offsets(text))]
    out = []
    for w, word in enumerate(text):
        out += [Piece(i, w, s, e) for i, (s, e) in zip(*base.encode_with_offsets(word))]
    return out


def _windows(seq: list[Piece], room: int, stride: int, overflow: bool) -> list[list[Piece]]:
    """`seq` cut to `room` tokens, or with `overflow` every window of `room` tokens, each starting
    `room - stride` after the previous one, the last ending at the end of `seq`."""
    if len(seq) <= room:
        return [seq]
    if not overflow:
        return [seq[:room]]
    out, start = [], 0
    while True:
        out.append(seq[start:start + room])
        if start + room >= len(seq):
            return out
        start += room - stride


@dataclasses.dataclass(frozen=True)
class Framed:
    """`base` (encode_with_offsets / encode / decode / vocab_size) framed for a task (module docstring)."""

    base: Any
    framing: str = "encoder"

    def __post_init__(self):
        if self.framing not in FRAMINGS:
            raise ValueError(f"framing={self.framing!r}: valid: {', '.join(FRAMINGS)}")

    vocab_size = property(lambda self: self.base.vocab_size)
    mask_id = property(lambda self: getattr(self.base, "mask_id", None))
    stats = property(lambda self: self.base.stats)

    def specials(self, pair: bool) -> int:
        before, between, after = FRAMINGS[self.framing]
        return len(before) + len(after) + (len(between) if pair else 0)

    def encode(self, text: str) -> list[int]:
        """One text's ids with the framing's special tokens (as a checkpoint tokenizer's `encode`)."""
        return list(self(text)["input_ids"][0])

    def decode(self, ids) -> str:
        return self.base.decode(ids)

    def __call__(self, text, text_pair=None, *, add_special_tokens: bool = True, truncation=None,
                 max_length: int | None = None, stride: int = 0, is_split_into_words: bool = False,
                 return_overflowing_tokens: bool = False, return_offsets_mapping: bool = False,
                 padding=False) -> dict[str, list]:
        if padding not in (False, None, "do_not_pad"):
            raise ValueError(f"padding={padding!r}: a built-in tokenizer does not pad (the task's layout does)")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation={truncation!r}: valid: {', '.join(map(repr, TRUNCATIONS))}")
        if max_length is not None and truncation is None:
            truncation = "longest_first"
        if truncation in (False, None, "do_not_truncate"):
            max_length = None
        elif max_length is None:
            raise ValueError(f"truncation={truncation!r} needs max_length")
        texts, pairs = _as_batch(text, text_pair, is_split_into_words)
        out: dict[str, list] = {k: [] for k in ("input_ids", "token_type_ids", "attention_mask", "word_ids",
                                                  "sequence_ids", "offset_mapping", "overflow_to_sample_mapping")}
        for i, (a, b) in enumerate(zip(texts, pairs)):
            first = _pieces(self.base, a, is_split_into_words)
            second = None if b is None else _pieces(self.base, b, is_split_into_words)
            for one, two in self._truncated(first, second, truncation, max_length, stride, return_overflowing_tokens,
                                             add_special_tokens):
                self._row(out, one, two, add_special_tokens)
                out["overflow_to_sample_mapping"].append(i)
        if not return_offsets_mapping:
            del out["offset_mapping"]
        if not return_overflowing_tokens:
            del out["overflow_to_sample_mapping"]
        return out

    def _truncated(self, first, second, truncation, max_length, stride, overflow, specials):
        """(first, second) token lists of each row within `max_length` (with overflow: windows)."""
        if max_length is None:
            return [(first, second)]
        room = max_length - (self.specials(second is not None) if specials else 0)
        if second is None or truncation == "only_second":
            fixed = 0 if second is None else len(first)
            cut = first if second is None else second
            width = room - fixed
            if width < (stride + 1 if overflow and len(cut) > width else 1):
                raise ValueError(f"max_length={max_length} with stride={stride}: {fixed} tokens of the first text "
                                 f"and the special tokens leave windows of {width} tokens for the "
                                 f"{'text' if second is None else 'second text'}; need more than stride")
            windows = _windows(cut, width, stride, overflow)
            return [(w, None) for w in windows] if second is None else [(first, w) for w in windows]
        if overflow:
            raise ValueError("return_overflowing_tokens with a pair needs truncation='only_second'")
        a, b = len(first), len(second)
        if a + b > room:  # longest first, as the tokenizers library: the shorter keeps at most half the room
            if a > b:
                b = min(b, room // 2)
                a = room - b
            else:
                a = min(a, room // 2)
                b = room - a
        return [(first[:a], second[:b])]

    def _row(self, out, first, second, specials: bool) -> None:
        before, between, after = FRAMINGS[self.framing] if specials else ((), (), ())
        ids, types, words, seqs, offsets = [], [], [], [], []

        def add_special(tokens, kind):
            for t in tokens:
                ids.append(t), types.append(kind), words.append(None), seqs.append(None), offsets.append((0, 0))

        def add_text(pieces, kind):
            for p in pieces:
                ids.append(p.id), types.append(kind), words.append(p.word), seqs.append(kind)
                offsets.append((p.start, p.end))

        add_special(before, 0)
        add_text(first, 0)
        if second is not None:
            add_special(between, 0)
            add_text(second, 1)
            add_special(after, 1)
        else:
            add_special(after, 0)
        out["input_ids"].append(ids)
        out["token_type_ids"].append(types)
        out["attention_mask"].append([1] * len(ids))
        out["word_ids"].append(words)
        out["sequence_ids"].append(seqs)
        out["offset_mapping"].append(offsets)


def _as_batch(text, text_pair, words: bool) -> tuple[list, list]:
    """(texts, pairs) as equal-length lists (a single input is a batch of one)."""
    single = (isinstance(text, (list, tuple)) and all(isinstance(w, str) for w in text)) if words \
        else isinstance(text, str)
    texts = [text] if single else list(text)
    if text_pair is None:
        return texts, [None] * len(texts)
    pairs = [text_pair] if single else list(text_pair)
    if len(pairs) != len(texts):
        raise ValueError(f"text_pair: {len(pairs)} inputs for {len(texts)} texts")
    return texts, pairs
