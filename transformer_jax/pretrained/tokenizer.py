"""The tokenizer of a pretrained model directory, called like the reference library's fast tokenizers.

    tok = tj.load_tokenizer("path/to/bert-base-uncased")
    batch = tok(["A sentence.", "Another one."], padding=True, truncation=True, max_length=128)
    batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]   # int32 [B, T]
    tok(questions, contexts, truncation="only_second", max_length=384, stride=128,
        return_overflowing_tokens=True, return_offsets_mapping=True)        # QA windows
    tok(word_lists, is_split_into_words=True)["word_ids"]                   # NER label alignment

The pipeline comes from `tokenizer_recipes.build` (the `tokenizers` package, assembled the way the
reference assembles each tokenizer class); this file holds the call: the padding and truncation
strategies, overflow windows, and the outputs under the reference's key names. Outputs are numpy
int32 arrays when every row has the same length (always when padded; a single string is a batch of
one), else lists of lists. `word_ids` and `sequence_ids` are lists per row (None at special tokens
and padding). `encode(text)` gives one text's ids with the special tokens the checkpoint adds
(BERT's [CLS] ... [SEP], T5's and Marian's EOS).

Marian (`source.spm` + `target.spm` + `vocab.json`) keeps its own small tokenizer: SentencePiece pieces
mapped through the shared vocabulary, the source model encoding and the target model decoding.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sentencepiece as spm

from transformer_jax.pretrained import tokenizer_files as files
from transformer_jax.pretrained import tokenizer_recipes as recipes

LARGE = int(1e20)  # the reference's model_max_length for "no limit" is 1e30
PADDING = ("longest", "max_length", "do_not_pad")
TRUNCATION = ("longest_first", "only_first", "only_second", "do_not_truncate")
# Keys the reference writes into tokenizer_config.json that describe where it was loaded from.
_LOCAL_KEYS = {"is_local", "local_files_only", "name_or_path", "added_tokens_decoder", "tokenizer_file",
               "vocab_file", "merges_file", "auto_map"}


def _ids(ids) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


def _strategies(padding, truncation, max_length, model_max_length: int):
    """(padding, truncation, max_length) as the reference's `_get_padding_truncation_strategies`."""
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length={max_length!r}: expected a positive integer or None")
    if max_length is not None and padding is False and truncation is None:
        truncation = "longest_first"
    if padding is True:
        pad = "longest"
    elif padding is False or padding is None:
        pad = "do_not_pad"
    elif padding in PADDING:
        pad = padding
    else:
        raise ValueError(f"padding={padding!r}: expected True, False or one of {PADDING}")
    if truncation is True:
        trunc = "longest_first"
    elif truncation is False or truncation is None:
        trunc = "do_not_truncate"
    elif truncation in TRUNCATION:
        trunc = truncation
    else:
        raise ValueError(f"truncation={truncation!r}: expected True, False or one of {TRUNCATION}")
    if max_length is None:
        if pad == "max_length":
            if model_max_length > LARGE:
                pad = "do_not_pad"
            else:
                max_length = model_max_length
        if trunc != "do_not_truncate":
            if model_max_length > LARGE:
                trunc = "do_not_truncate"
            else:
                max_length = model_max_length
    return pad, trunc, max_length


def _is_words(x) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(w, str) for w in x)


def _batch(text, text_pair, is_split_into_words: bool) -> list:
    """The inputs as the backend's batch (texts, word lists, or pairs of them); a single input is a
    batch of one. Which inputs count as one follows the reference's `_encode_plus`."""
    if is_split_into_words:
        ok = _is_words(text) or (isinstance(text, (list, tuple)) and all(_is_words(t) for t in text))
        batched = isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], (list, tuple))
        what = "a list of words, or a batch of such lists"
    else:
        ok = isinstance(text, str) or (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text))
        batched = isinstance(text, (list, tuple))
        what = "a string or a list of strings (with is_split_into_words=True: lists of words)"
    if not ok:
        raise ValueError(f"text={str(text)[:60]!r}: expected {what}")
    if not batched:
        return [(text, text_pair)] if text_pair else [text]
    if text_pair is None:
        return list(text)
    if isinstance(text_pair, str) or len(text_pair) != len(text):
        raise ValueError(f"text_pair: expected a list as long as text ({len(text)}), got "
                         f"{type(text_pair).__name__}{'' if isinstance(text_pair, str) else f' of {len(text_pair)}'}")
    return list(zip(text, text_pair))


def _rectangle(rows: list):
    """Rows as one int32 array when they all have the same length, else as lists."""
    if rows and len({len(r) for r in rows}) == 1:
        return np.asarray(rows, np.int32).reshape(len(rows), len(rows[0]))
    return [list(r) for r in rows]


class Encoding(dict):
    """The outputs of a tokenizer call: a dict under the reference's key names. `model_inputs()` keeps
    only the model's inputs (`model_input_names`), for `model.apply(variables, **enc.model_inputs(),
    method="forward")`; the other keys (offsets, word and sequence ids) are for the caller."""

    def __init__(self, values: dict, model_input_names: list[str]):
        super().__init__(values)
        self.model_input_names = list(model_input_names)

    def model_inputs(self) -> dict:
        return {k: self[k] for k in self.model_input_names if k in self}


class PretrainedTokenizer:
    """A `tokenizers` pipeline with the reference's call API (see the module docstring)."""

    def __init__(self, loaded: recipes.Loaded):
        self._tok = loaded.backend
        self._loaded = loaded
        s = loaded.settings
        self.class_name = loaded.class_name
        self.special_tokens = dict(loaded.special_tokens)
        self.model_input_names = list(s.get("model_input_names") or (
            ["input_ids", "token_type_ids", "attention_mask"] if loaded.class_name in recipes.WITH_TOKEN_TYPES
            else ["input_ids", "attention_mask"]))
        self.model_max_length = int(s.get("model_max_length") or int(1e30))
        self.padding_side = s.get("padding_side", "right")
        self.truncation_side = s.get("truncation_side", "right")
        self.clean_up_tokenization_spaces = bool(s.get("clean_up_tokenization_spaces", False))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)  # the reference's len(tok)
        self._lock = threading.Lock()  # see `_encode`

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    # ---- ids of the special tokens ----
    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def _special_id(self, key: str) -> int | None:
        return self.token_to_id(self.special_tokens.get(key))

    pad_token_id = property(lambda self: self._special_id("pad_token"))
    cls_token_id = property(lambda self: self._special_id("cls_token"))
    sep_token_id = property(lambda self: self._special_id("sep_token"))
    mask_token_id = property(lambda self: self._special_id("mask_token"))
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))

    @property
    def all_special_ids(self) -> list[int]:
        tokens = list(self.special_tokens.values()) + list(self._loaded.extra_special_tokens)
        return sorted({i for i in map(self.token_to_id, tokens) if i is not None})

    def __len__(self) -> int:
        return self.vocab_size

    # ---- encoding ----
    def __call__(self, text, text_pair=None, *, add_special_tokens: bool = True, padding=False, truncation=None,
                 max_length: int | None = None, stride: int = 0, is_split_into_words: bool = False,
                 return_overflowing_tokens: bool = False, return_offsets_mapping: bool = False,
                 padding_side: str | None = None, pad_to_multiple_of: int | None = None) -> Encoding:
        """Encode a text, a batch of texts or of (text, text_pair) pairs. Returns `input_ids`,
        `token_type_ids` (when in `model_input_names`), `attention_mask`, `offset_mapping` [.., 2] (on
        request, character spans into each text), `overflow_to_sample_mapping` (with overflow: the input
        each row came from), `word_ids` and `sequence_ids` (lists per row, None at special tokens); an
        `Encoding` (a dict) whose `model_inputs()` holds only the first three."""
        pad, trunc, max_length = _strategies(padding, truncation, max_length, self.model_max_length)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride={stride!r}: expected an integer >= 0")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side={side!r}: expected 'left' or 'right'")
        if pad != "do_not_pad" and self.pad_token_id is None:
            raise ValueError(f"padding={padding!r}: this tokenizer ({self.class_name}) has no padding token; "
                             "pad the ids yourself or use a tokenizer_config.json that names a pad_token")
        if (trunc != "do_not_truncate" and pad != "do_not_pad" and pad_to_multiple_of and max_length
                and max_length % pad_to_multiple_of):
            raise ValueError(f"max_length={max_length} is not a multiple of pad_to_multiple_of={pad_to_multiple_of}")
        batch = _batch(text, text_pair, is_split_into_words)  # a single input is a batch of one: [1, T]
        encodings = self._encode(batch, pad, trunc, max_length, stride, side, pad_to_multiple_of,
                                 add_special_tokens, is_split_into_words)
        rows, sample = [], []
        for i, enc in enumerate(encodings):
            group = [enc] + (list(enc.overflowing) if return_overflowing_tokens else [])
            rows += group
            sample += [i] * len(group)
        out = {"input_ids": _rectangle([e.ids for e in rows])}
        if "token_type_ids" in self.model_input_names:
            out["token_type_ids"] = _rectangle([e.type_ids for e in rows])
        out["attention_mask"] = _rectangle([e.attention_mask for e in rows])
        if return_offsets_mapping:
            offsets = [e.offsets for e in rows]  # (start, end) tuples
            if rows and len({len(o) for o in offsets}) == 1:
                out["offset_mapping"] = np.asarray(offsets, np.int32).reshape(len(rows), -1, 2)
            else:
                out["offset_mapping"] = [[list(o) for o in row] for row in offsets]
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = np.asarray(sample, np.int32)
        out["word_ids"] = [list(e.word_ids) for e in rows]
        out["sequence_ids"] = [list(e.sequence_ids) for e in rows]
        return Encoding(out, self.model_input_names)

    def _check_stride(self, batch, trunc, max_length, stride, add_special_tokens, pretokenized) -> None:
        """The windows of a truncated sequence must advance: stride < the tokens left for it. The
        tokenizers library panics otherwise (with a Rust backtrace); this names the row instead. Longest-
        first truncation of pairs is left to the library's own check."""
        if stride == 0 or trunc == "do_not_truncate":
            return
        pairs = [b for b in batch if isinstance(b, tuple)]
        if pairs and trunc == "longest_first":
            return
        budget = max_length - (self._tok.num_special_tokens_to_add(bool(pairs)) if add_special_tokens else 0)
        if not pairs:
            if stride < budget or budget <= 0:  # windows of 0 tokens: the library returns empty rows
                return
            lengths = [len(e) for e in self._tok.encode_batch(batch, add_special_tokens=False,
                                                              is_pretokenized=pretokenized)]
            for i, n in enumerate(lengths):
                if n > budget:
                    raise ValueError(f"stride={stride} with max_length={max_length}: text {i} ({n} tokens) is cut "
                                     f"into windows of {budget} tokens (max_length less {max_length - budget} special "
                                     f"tokens); stride must be < {budget}")
            return
        kept, cut = (0, 1) if trunc == "only_second" else (1, 0)
        fixed = [len(e) for e in self._tok.encode_batch([b[kept] for b in batch], add_special_tokens=False,
                                                        is_pretokenized=pretokenized)]
        for i, n_fixed in enumerate(fixed):
            if budget - n_fixed > stride or budget - n_fixed <= 0:
                continue
            n_cut = len(self._tok.encode(batch[i][cut], add_special_tokens=False, is_pretokenized=pretokenized))
            if n_fixed + n_cut > budget and n_cut > n_fixed + n_cut - budget:
                which = "second" if trunc == "only_second" else "first"
                raise ValueError(
                    f"stride={stride} with max_length={max_length}, truncation={trunc!r}: in pair {i} the other text "
                    f"takes {n_fixed} tokens, leaving windows of {budget - n_fixed} tokens for the {which} text "
                    f"(after {max_length - budget} special tokens); stride must be < {budget - n_fixed}")

    def _encode(self, batch, pad, trunc, max_length, stride, side, pad_to_multiple_of, add_special_tokens,
                is_split_into_words):
        """The backend's encodings. One call at a time: the `tokenizers` pipeline holds its truncation
        and padding settings between calls, and Grain featurizes on several threads (unserialised, a
        call could run under another's settings and come back longer than its max_length)."""
        with self._lock:
            return self._encode_locked(batch, pad, trunc, max_length, stride, side, pad_to_multiple_of,
                                       add_special_tokens, is_split_into_words)

    def _encode_locked(self, batch, pad, trunc, max_length, stride, side, pad_to_multiple_of, add_special_tokens,
                       is_split_into_words):
        tok = self._tok
        self._check_stride(batch, trunc, max_length, stride, add_special_tokens, is_split_into_words)
        try:
            if trunc != "do_not_truncate":
                tok.enable_truncation(max_length, stride=stride, strategy=trunc, direction=self.truncation_side)
            if pad != "do_not_pad":
                tok.enable_padding(direction=side, pad_id=self.pad_token_id, pad_type_id=0,
                                   pad_token=self.special_tokens["pad_token"],
                                   length=max_length if pad == "max_length" else None,
                                   pad_to_multiple_of=pad_to_multiple_of)
            return tok.encode_batch(batch, add_special_tokens=add_special_tokens, is_pretokenized=is_split_into_words)
        except BaseException as e:  # the tokenizers library panics (a BaseException) on a too long stride
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise ValueError(f"cannot encode with truncation={trunc!r}, max_length={max_length}, stride={stride}: "
                             f"{e}".split("(note")[0].strip()) from None
        finally:
            tok.no_truncation()
            tok.no_padding()

    def encode(self, text: str) -> list[int]:
        """One text's ids, with the special tokens the checkpoint's tokenizer adds."""
        return self(text)["input_ids"][0].tolist()

    # ---- decoding ----
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        text = self._tok.decode(_ids(ids), skip_special_tokens=skip_special_tokens)
        clean = clean_up_tokenization_spaces
        if clean is None:
            clean = self.clean_up_tokenization_spaces
        if clean and type(self._tok.model).__name__ != "BPE":  # the reference skips it for BPE
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences]

    def convert_ids_to_tokens(self, ids) -> list[str | None]:
        return [self._tok.id_to_token(i) for i in _ids(ids)]

    # ---- saving ----
    def save(self, directory) -> list[Path]:
        """Write `tokenizer.json` and `tokenizer_config.json` (class, special tokens, settings, added
        tokens): the reference's AutoTokenizer and `load_tokenizer` read them back identically."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("special_tokens_map.json", "added_tokens.json"):  # would be merged into the settings
            (out / stale).unlink(missing_ok=True)
        self._tok.save(str(out / "tokenizer.json"))
        config = {k: v for k, v in self._loaded.settings.items() if k not in _LOCAL_KEYS}
        config.update(self.special_tokens)
        config["tokenizer_class"] = self.class_name
        config["model_max_length"] = self.model_max_length
        extra = [t for t in self._loaded.extra_special_tokens if t not in self.special_tokens.values()]
        config.pop("additional_special_tokens", None)
        config["extra_special_tokens"] = extra
        config["added_tokens_decoder"] = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(self._tok.get_added_tokens_decoder().items())}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return [out / "tokenizer.json", out / "tokenizer_config.json"]


class MarianTokenizer:
    """Marian's source/target SentencePiece models over one `vocab.json` of pieces."""

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, directory: Path):
        self._directory = directory
        self._source = _spm(directory / "source.spm")
        self._target = _spm(directory / "target.spm")
        self._vocab = files.read_json(directory / "vocab.json")
        bad = [(p, i) for p, i in self._vocab.items() if isinstance(i, bool) or not isinstance(i, int)]
        if bad:
            raise ValueError(f"{directory / 'vocab.json'}: piece {bad[0][0]!r} maps to {bad[0][1]!r}; "
                             "expected a JSON object of piece -> integer id")
        self._pieces = {i: p for p, i in self._vocab.items()}
        self.vocab_size = len(self._vocab)
        self.eos_id, self.unk_id = self._vocab.get("</s>", 0), self._vocab.get("<unk>", 1)
        self.pad_token_id = self._vocab.get("<pad>")
        self.eos_token_id = self.eos_id
        self._special = {i for p, i in self._vocab.items() if p.startswith("<") and p.endswith(">")}

    def encode(self, text: str) -> list[int]:
        pieces = self._source.encode(text, out_type=str)
        return [self._vocab.get(p, self.unk_id) for p in pieces] + [self.eos_id]

    def __call__(self, text, *, padding=False, truncation=None, max_length: int | None = None) -> dict:
        """input_ids and attention_mask (pairs, offsets and overflow are not supported for Marian)."""
        pad, trunc, max_length = _strategies(padding, truncation, max_length, int(1e30))
        batch = _batch(text, None, False)
        rows = [self.encode(t) for t in batch]
        if trunc != "do_not_truncate":
            rows = [r[: max_length - 1] + [self.eos_id] if len(r) > max_length else r for r in rows]
        if pad != "do_not_pad" and self.pad_token_id is None:
            raise ValueError(f"padding={padding!r}: {self._directory / 'vocab.json'} has no <pad> piece")
        width = max_length if pad == "max_length" else max(map(len, rows)) if pad == "longest" else None
        lengths = [len(r) for r in rows]
        if width is not None:
            rows = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
        masks = [[1] * n + [0] * (len(r) - n) for r, n in zip(rows, lengths)]
        return Encoding({"input_ids": _rectangle(rows), "attention_mask": _rectangle(masks)}, self.model_input_names)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        keep = [i for i in _ids(ids) if i in self._pieces and not (skip_special_tokens and i in self._special)]
        return self._target.decode_pieces([self._pieces[i] for i in keep])

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    def save(self, directory) -> list[Path]:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.json").unlink(missing_ok=True)  # would be read before the Marian files
        names = ["source.spm", "target.spm", "vocab.json", "tokenizer_config.json"]
        written = []
        for name in names:
            if (self._directory / name).is_file() and (self._directory / name).resolve() != (out / name).resolve():
                shutil.copyfile(self._directory / name, out / name)
            if (out / name).is_file():
                written.append(out / name)
        return written


def _spm(path: Path) -> spm.SentencePieceProcessor:
    files.read_spiece(path)  # a named error for an empty or truncated model
    return spm.SentencePieceProcessor(model_file=str(path))


def load_tokenizer(path):
    """The tokenizer stored in a pretrained model directory (see the module docstring); the accepted
    files are `tokenizer_files.ACCEPTED`. Broken files are a ValueError naming the file."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory; expected a model directory with one of: {files.ACCEPTED}")
    if not (directory / "tokenizer.json").is_file() and all(
            (directory / f).is_file() for f in ("source.spm", "target.spm", "vocab.json")):
        return MarianTokenizer(directory)
    return PretrainedTokenizer(recipes.build(directory))
