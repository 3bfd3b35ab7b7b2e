"""Tokenizers of pretrained model directories, with the library's small interface
(`encode(text) -> ids`, `decode(ids) -> text`, `vocab_size`).

- `tokenizer.json`: the `tokenizers` package (GPT-2, Llama, BART, BERT fast tokenizers), with the
  file's own post-processor (e.g. BERT's [CLS] ... [SEP]).
- `spiece.model`: SentencePiece ids directly, plus EOS (T5).
- `source.spm` + `target.spm` + `vocab.json`: Marian: SentencePiece pieces mapped through the shared
  vocabulary, plus EOS; the source model encodes and the target model decodes.

Unlike the library's own tokenizers, `encode` adds what the checkpoint's tokenizer adds (T5 and
Marian append EOS), because that is what the pretrained model was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm


class JsonTokenizer:
    """A Hugging Face `tokenizer.json`."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


class SentencePieceIds:
    """T5's `spiece.model`: SentencePiece ids, EOS appended; decoding drops special ids."""

    def __init__(self, path: Path):
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self._sp.get_piece_size()
        self.eos_id = self._sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text) + [self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        keep = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and not self._sp.is_control(int(i))]
        return self._sp.decode(keep)


class MarianTokenizer:
    """Marian's source/target SentencePiece models over one `vocab.json` of pieces."""

    def __init__(self, directory: Path):
        self._source = spm.SentencePieceProcessor(model_file=str(directory / "source.spm"))
        self._target = spm.SentencePieceProcessor(model_file=str(directory / "target.spm"))
        self._vocab = json.loads((directory / "vocab.json").read_text())
        self._pieces = {i: p for p, i in self._vocab.items()}
        self.vocab_size = len(self._vocab)
        self.eos_id, self.unk_id = self._vocab.get("</s>", 0), self._vocab.get("<unk>", 1)
        self._special = {i for p, i in self._vocab.items() if p.startswith("<") and p.endswith(">")}

    def encode(self, text: str) -> list[int]:
        pieces = self._source.encode(text, out_type=str)
        return [self._vocab.get(p, self.unk_id) for p in pieces] + [self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self._pieces[int(i)] for i in ids if int(i) in self._pieces and int(i) not in self._special]
        return self._target.decode_pieces(pieces)


def load_tokenizer(path):
    """The tokenizer stored in a pretrained model directory (see the module docstring)."""
    directory = Path(path)
    if (directory / "tokenizer.json").exists():
        return JsonTokenizer(directory / "tokenizer.json")
    if (directory / "spiece.model").exists():
        return SentencePieceIds(directory / "spiece.model")
    if all((directory / f).exists() for f in ("source.spm", "target.spm", "vocab.json")):
        return MarianTokenizer(directory)
    raise FileNotFoundError(
        f"{directory} has no tokenizer: expected tokenizer.json, spiece.model, or source.spm + "
        "target.spm + vocab.json")
