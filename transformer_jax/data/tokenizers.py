"""Tokenizers with one small interface: ``encode``, ``decode``, ``vocab_size``, and
``encode_with_offsets`` (the ids and each token's character span, whitespace trimmed: what
``data.framed`` needs to call them like a checkpoint's tokenizer, for QA spans and NER words).

Reserved ids are shared by the whole library (defined once, in config.py): 0 = pad,
1 = EOS, 2 = BOS, 3 = UNK. A tokenizer that can serve a masked LM has a ``mask_id``
(SentencePiece trained with the "[MASK]" symbol); the others have ``mask_id = None``. ``encode``
adds neither BOS nor EOS (the pipeline does); ``decode`` stops at the first EOS and drops pad and
BOS, so it can be fed a model's raw output row.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import sentencepiece as spm

from transformer_jax.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from transformer_jax.data.stats import DataStats

NUM_RESERVED = 4
MASK = "[MASK]"


class Tokenizer(Protocol):
    vocab_size: int
    stats: DataStats

    def encode(self, text: str | bytes) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...


def _content_ids(ids: Iterable[int]) -> list[int]:
    """Ids up to the first EOS, with pad and BOS removed."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i in (PAD_ID, BOS_ID):
            continue
        out.append(i)
    return out


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) without the whitespace at either end (an all-space piece: empty, at its end)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def as_text(text: str | bytes, stats: DataStats | None = None) -> str:
    """tfds hands out ``bytes``; decode them, replacing and counting invalid UTF-8."""
    if isinstance(text, str):
        return text
    try:
        return bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        if stats is not None:
            stats.add(invalid_utf8=1)
        return bytes(text).decode("utf-8", errors="replace")


class ByteTokenizer:
    """UTF-8 bytes shifted past the reserved ids: id = byte + 4 (vocab 260).

    Never produces UNK; bytes input is encoded as-is, so invalid UTF-8 survives
    encoding and is replaced (U+FFFD) and counted only when decoded.
    """

    vocab_size = 256 + NUM_RESERVED
    mask_id = None

    def __init__(self, stats: DataStats | None = None):
        self.stats = stats if stats is not None else DataStats()

    def encode(self, text: str | bytes) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return [b + NUM_RESERVED for b in data]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i - NUM_RESERVED for i in _content_ids(ids) if NUM_RESERVED <= i < self.vocab_size)
        return as_text(data, self.stats)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Every byte of character c spans [c, c + 1)."""
        ids, offsets = [], []
        for c, ch in enumerate(text):
            for b in ch.encode("utf-8"):
                ids.append(b + NUM_RESERVED)
                offsets.append((c, c) if ch.isspace() else (c, c + 1))
        return ids, offsets


class WordTokenizer:
    """Whitespace-separated words from a fixed vocabulary (ids 4, 5, ...).

    Used for ListOps, whose 15-symbol vocabulary is known in advance (the Long
    Range Arena setup tokenizes it word by word). Unknown words become UNK and
    are counted. A vocabulary with the word "[MASK]" serves a masked LM (``mask_id``).
    """

    def __init__(self, vocab: Sequence[str], stats: DataStats | None = None):
        if len(set(vocab)) != len(vocab) or any(not w or w.split() != [w] for w in vocab):
            raise ValueError(f"vocab must be distinct non-empty words without spaces, got {vocab!r}")
        self.vocab = tuple(vocab)
        self._ids = {w: i + NUM_RESERVED for i, w in enumerate(self.vocab)}
        self.mask_id = self._ids.get(MASK)
        self.vocab_size = len(self.vocab) + NUM_RESERVED
        self.stats = stats if stats is not None else DataStats()

    def encode(self, text: str | bytes) -> list[int]:
        ids = [self._ids.get(w, UNK_ID) for w in as_text(text, self.stats).split()]
        if n := ids.count(UNK_ID):
            self.stats.add(unknown_tokens=n)
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        return self.encode(text), spans

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in _content_ids(ids):
            words.append(self.vocab[i - NUM_RESERVED] if NUM_RESERVED <= i < self.vocab_size else "<unk>")
        return " ".join(words)


class SentencePieceTokenizer:
    """A SentencePiece BPE model, trained on first use and reused afterwards.

    Kudo & Richardson (2018), https://arxiv.org/abs/1808.06226. If
    ``model_path`` exists it is loaded and ``texts`` is never touched; otherwise
    the model is trained on ``texts`` (an iterable, or a callable returning one,
    so that reading the training split is skipped when not needed), written to a
    temporary file beside ``model_path`` and renamed into place, so concurrent
    processes and interrupted runs never see a half-written model.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        vocab_size: int | None = None,
        texts: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        max_train_sentences: int = 1_000_000,
        stats: DataStats | None = None,
        symbols: Sequence[str] = (),
    ):
        self.model_path = os.fspath(model_path)
        self.stats = stats if stats is not None else DataStats()
        self.trained = False
        if not os.path.exists(self.model_path):
            if vocab_size is None or texts is None:
                raise ValueError(
                    f"SentencePiece model {self.model_path!r} does not exist; pass vocab_size "
                    "and texts (e.g. the task's training split) to train it"
                )
            self._train(texts, vocab_size, max_train_sentences, tuple(symbols))
            self.trained = True
        self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        self.vocab_size = self._sp.get_piece_size()
        mask = self._sp.piece_to_id(MASK)
        self.mask_id = None if mask == self._sp.unk_id() else mask
        missing = [s for s in symbols if self._sp.piece_to_id(s) == self._sp.unk_id()]
        if missing:
            raise ValueError(f"SentencePiece model {self.model_path!r} lacks the piece(s) {missing}; delete it to "
                             "train a new one with them")
        reserved = (self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id(), self._sp.unk_id())
        if reserved != (PAD_ID, EOS_ID, BOS_ID, UNK_ID):
            raise ValueError(
                f"SentencePiece model {self.model_path!r} has (pad, eos, bos, unk) = {reserved}; "
                f"expected {(PAD_ID, EOS_ID, BOS_ID, UNK_ID)}"
            )

    def _train(self, texts, vocab_size: int, max_sentences: int, symbols: tuple[str, ...] = ()) -> None:
        if vocab_size <= NUM_RESERVED:
            raise ValueError(f"vocab_size must exceed {NUM_RESERVED}, got {vocab_size}")
        if callable(texts):
            texts = texts()

        def sentences():
            n = 0
            for t in texts:
                t = as_text(t, self.stats)
                if not t.strip():
                    continue
                yield t
                n += 1
                if n >= max_sentences:
                    return

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="bpe",  # byte-pair encoding, as in Vaswani et al. 2017 (section 5.1)
            character_coverage=1.0,
            split_digits=True,  # one piece per digit: numbers compose digit by digit
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            hard_vocab_limit=False,  # a small corpus may give fewer pieces
            user_defined_symbols=list(symbols),  # e.g. [MASK]: ids 4, 5, ... never split
            num_threads=2,
            minloglevel=2,
        )
        directory = os.path.dirname(os.path.abspath(self.model_path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".spm-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model.getvalue())
            os.replace(tmp, self.model_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def encode(self, text: str | bytes) -> list[int]:
        ids = self._sp.encode(as_text(text, self.stats), out_type=int)
        if n := ids.count(UNK_ID):
            self.stats.add(unknown_tokens=n)
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """SentencePiece's byte spans of each piece in the input, as character spans."""
        text = as_text(text, self.stats)
        pieces = self._sp.encode(text, return_type="proto").pieces
        char_of = [0] * (len(text.encode("utf-8")) + 1)  # byte offset -> character offset
        b = 0
        for c, ch in enumerate(text):
            n = len(ch.encode("utf-8"))
            char_of[b:b + n] = [c] * n
            b += n
        char_of[b] = len(text)
        ids = [p.id for p in pieces]
        if n := ids.count(UNK_ID):
            self.stats.add(unknown_tokens=n)
        return ids, [_trim(text, char_of[p.begin], char_of[p.end]) for p in pieces]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([i for i in _content_ids(ids) if i < self.vocab_size])


TOKENIZER_KINDS = ("byte", "sentencepiece", "listops")


def make_tokenizer(
    kind: str,
    *,
    vocab_size: int | None = None,
    model_path: str | os.PathLike | None = None,
    texts: Iterable[str] | Callable[[], Iterable[str]] | None = None,
    symbols: Sequence[str] = (),
) -> Tokenizer:
    """Builds a tokenizer by name: 'byte', 'sentencepiece' or 'listops'.

    'sentencepiece' needs ``model_path``; it is trained from ``texts`` with
    ``vocab_size`` pieces only when the file does not exist yet.
    """
    if kind == "byte":
        return ByteTokenizer()
    if kind == "listops":
        from transformer_jax.data.listops import VOCAB  # local: keep tokenizers import-light

        return WordTokenizer(VOCAB)
    if kind == "sentencepiece":
        if model_path is None:
            raise ValueError("make_tokenizer('sentencepiece') needs model_path (a file in the workdir)")
        return SentencePieceTokenizer(model_path, vocab_size=vocab_size, texts=texts, symbols=symbols)
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {TOKENIZER_KINDS}")
