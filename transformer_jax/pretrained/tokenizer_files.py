"""Tokenizer files of a pretrained directory -> a `tokenizers.Tokenizer` pipeline built the way the
reference library (transformers 5) builds it, so that ids, offsets and word ids match it exactly.

The reference rebuilds the pipeline of a known tokenizer class from that class's own recipe (its
normalizer, pre-tokenizer, decoder and post-processor), taking only the vocabulary (and merges, and
the SentencePiece normalisation table) from the files; whichever file holds the vocabulary:
`tokenizer.json`, `vocab.txt`, `vocab.json` + `merges.txt` or `spiece.model`. The recipes below are
those of `models/{bert,distilbert,roberta,gpt2,t5,albert}/tokenization_*.py`. A `tokenizer.json` of any
other class is used as written (the reference's generic `TokenizersBackend` does the same).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece

ACCEPTED = ("tokenizer.json; vocab.txt (BERT WordPiece); vocab.json + merges.txt (GPT-2/RoBERTa byte-level "
            "BPE); spiece.model (T5, ALBERT SentencePiece); source.spm + target.spm + vocab.json (Marian)")

# config.json model_type -> tokenizer class, when tokenizer_config.json does not name one.
MODEL_TYPE_CLASS = {"bert": "BertTokenizer", "distilbert": "DistilBertTokenizer", "roberta": "RobertaTokenizer",
                    "xlm-roberta": "XLMRobertaTokenizer", "gpt2": "GPT2Tokenizer", "t5": "T5Tokenizer",
                    "mt5": "T5Tokenizer", "albert": "AlbertTokenizer", "marian": "MarianTokenizer"}
# The classes whose outputs include token_type_ids (their `model_input_names`); all others give
# input_ids + attention_mask, as the reference's base class does.
WITH_TOKEN_TYPES = {"BertTokenizer", "ConvBertTokenizer", "MarkupLMTokenizer"}
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class Loaded:
    """A built pipeline plus what the reference keeps beside it."""

    backend: Tokenizer
    class_name: str
    settings: dict  # tokenizer_config.json (+ special_tokens_map.json), with defaults of the class
    special_tokens: dict = field(default_factory=dict)  # "cls_token" -> "[CLS]", ...
    extra_special_tokens: tuple = ()


def read_json(path: Path, expect=dict):
    """A JSON file as a dict (or list), or a ValueError naming the file and what is wrong with it."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                         "the file may be truncated") from None
    if not isinstance(value, expect):
        raise ValueError(f"{path}: expected a JSON {expect.__name__}, found a {type(value).__name__}")
    return value


def token_content(value):
    """A special token as written in a config: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def read_settings(directory: Path) -> dict:
    settings = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
        if (directory / name).is_file():
            settings.update(read_json(directory / name))
    return settings


def class_name(directory: Path, settings: dict, layout: str) -> str:
    name = settings.get("tokenizer_class")
    if not name and (directory / "config.json").is_file():
        model_type = read_json(directory / "config.json").get("model_type")
        name = MODEL_TYPE_CLASS.get(str(model_type))
    if not name:
        name = {"vocab.txt": "BertTokenizer", "vocab.json": "GPT2Tokenizer", "spiece.model": "T5Tokenizer"}.get(
            layout, "PreTrainedTokenizerFast")
    return name[: -len("Fast")] if name.endswith("TokenizerFast") else name


# ---- vocabulary sources -------------------------------------------------------------------------

def read_vocab_txt(path: Path) -> dict[str, int]:
    """BERT's vocab.txt: one token a line, the id is the line number (as the reference's load_vocab)."""
    try:
        with open(path, encoding="utf-8") as f:  # text mode: universal newlines, as the reference reads it
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not lines:
        raise ValueError(f"{path}: empty; a WordPiece vocabulary has one token per line")
    vocab = {}
    for i, token in enumerate(lines):
        vocab[token.rstrip("\n")] = i
    return vocab


def read_bpe_files(directory: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = read_json(directory / "vocab.json")
    path = directory / "merges.txt"
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    merges = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}: line {n} {line[:40]!r} is not a merge 'left right'")
        merges.append((parts[0], parts[1]))
    return vocab, merges


def read_spiece(path: Path):
    """The SentencePiece model proto of `spiece.model`, or a ValueError naming the file."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    data = path.read_bytes()
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError: the file is cut short or not a model
        raise ValueError(f"{path}: not a SentencePiece model ({type(e).__name__}: {e}); the file may be "
                         "truncated") from None
    if not data or not proto.pieces:
        raise ValueError(f"{path}: a SentencePiece model with no pieces ({len(data)} bytes); the file is empty "
                         "or truncated")
    return proto


def json_model(path: Path) -> tuple[dict, bytes | None]:
    """The `model` section of a tokenizer.json and its Precompiled charsmap (if any)."""
    import base64

    data = read_json(path)
    model = data.get("model")
    if not isinstance(model, dict) or "vocab" not in model:
        raise ValueError(f"{path}: no 'model' with a 'vocab'; not a tokenizers file")
    norm = data.get("normalizer") or {}
    parts = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    charsmap = next((base64.b64decode(p["precompiled_charsmap"]) for p in parts
                     if p.get("type") == "Precompiled" and p.get("precompiled_charsmap")), None)
    return model, charsmap


# ---- the class recipes --------------------------------------------------------------------------

def _id(tok: Tokenizer, token: str, vocab_fallback: int | None = None) -> int:
    i = tok.token_to_id(token)
    return vocab_fallback if i is None else i


def wordpiece_pipeline(vocab: dict[str, int], s: dict) -> Tokenizer:
    """BertTokenizer / DistilBertTokenizer."""
    tok = Tokenizer(WordPiece(vocab, unk_token=str(s["unk_token"])))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=s.get("tokenize_chinese_chars", True),
        strip_accents=s.get("strip_accents"), lowercase=s.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def bert_post(tok: Tokenizer, s: dict) -> processors.PostProcessor:
    cls, sep = str(s["cls_token"]), str(s["sep_token"])
    return processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, _id(tok, cls, 2)), (sep, _id(tok, sep, 3))])


def byte_bpe_pipeline(vocab: dict[str, int], merges: list, s: dict) -> Tokenizer:
    """GPT2Tokenizer / RobertaTokenizer."""
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(s.get("add_prefix_space", False)))
    tok.decoder = decoders.ByteLevel()
    return tok


def roberta_post(tok: Tokenizer, s: dict) -> processors.PostProcessor:
    sep, cls = str(s["sep_token"]), str(s["cls_token"])
    return processors.RobertaProcessing((sep, tok.token_to_id(sep)), (cls, tok.token_to_id(cls)),
                                        bool(s.get("trim_offsets", True)), bool(s.get("add_prefix_space", False)))


def bos_eos_post(tok: Tokenizer, s: dict) -> processors.PostProcessor:
    """The reference's `update_post_processor` (GPT-2 and other classes without a template)."""
    bos, eos = token_content(s.get("bos_token")), token_content(s.get("eos_token"))
    add_bos, add_eos = bool(s.get("add_bos_token")) and bos is not None, bool(s.get("add_eos_token")) and eos is not None
    single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
    pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
    special = ([(bos, tok.token_to_id(bos))] if add_bos else []) + ([(eos, tok.token_to_id(eos))] if add_eos else [])
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def t5_pipeline(pieces: list[tuple[str, float]], charsmap: bytes | None, s: dict) -> Tokenizer:
    tok = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    if charsmap:
        tok.normalizer = normalizers.Precompiled(charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tok


def t5_post(tok: Tokenizer, s: dict) -> processors.PostProcessor:
    return processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                         special_tokens=[("</s>", tok.token_to_id(str(s["eos_token"])))])


def albert_pipeline(pieces: list[tuple[str, float]], charsmap: bytes | None, s: dict) -> Tokenizer:
    tok = Tokenizer(Unigram(pieces, unk_id=1, byte_fallback=False))
    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if not s.get("keep_accents", False):
        steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if s.get("do_lower_case", True):
        steps.append(normalizers.Lowercase())
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    tok.normalizer = normalizers.Sequence(steps)
    scheme = "always" if s.get("add_prefix_space", True) else "never"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    return tok


def albert_post(tok: Tokenizer, s: dict) -> processors.PostProcessor:
    return processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id(str(s["cls_token"]))),
                        ("[SEP]", tok.token_to_id(str(s["sep_token"])))])


# Each known class: its special-token defaults, and whether its template replaces the file's.
DEFAULTS = {
    "BertTokenizer": dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                          mask_token="[MASK]"),
    "RobertaTokenizer": dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                             unk_token="<unk>", pad_token="<pad>", mask_token="<mask>"),
    "GPT2Tokenizer": dict(unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    "T5Tokenizer": dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>"),
    "AlbertTokenizer": dict(bos_token="[CLS]", eos_token="[SEP]", unk_token="<unk>", sep_token="[SEP]",
                            pad_token="<pad>", cls_token="[CLS]", mask_token="[MASK]"),
}
DEFAULTS["DistilBertTokenizer"] = DEFAULTS["BertTokenizer"]


def _settings_with_defaults(name: str, settings: dict) -> dict:
    s = dict(DEFAULTS.get(name, {}))
    s.update({k: v for k, v in settings.items() if not (k in SPECIAL_KEYS and v is None and k in s)})
    for key in SPECIAL_KEYS:
        if key in s:
            s[key] = token_content(s[key])
    return s


def _extra_tokens(settings: dict) -> list:
    extra = settings.get("extra_special_tokens") or settings.get("additional_special_tokens") or []
    if isinstance(extra, dict):  # named extras: {"name": token}
        extra = list(extra.values())
    return [token_content(t) for t in extra]


def build(directory: Path) -> Loaded:
    """Read a tokenizer directory (see `ACCEPTED`) into a pipeline."""
    settings = read_settings(directory)
    files = {n for n in ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model")
             if (directory / n).is_file()}
    layout = ("tokenizer.json" if "tokenizer.json" in files else "spiece.model" if "spiece.model" in files
              else "vocab.json" if {"vocab.json", "merges.txt"} <= files else "vocab.txt" if "vocab.txt" in files
              else None)
    if layout is None:
        raise ValueError(f"{directory}: no tokenizer files; expected one of: {ACCEPTED}")
    name = class_name(directory, settings, layout)
    s = _settings_with_defaults(name, settings)
    extra = _extra_tokens(settings)
    path = directory / layout
    if name in ("BertTokenizer", "DistilBertTokenizer"):
        vocab = json_model(path)[0]["vocab"] if layout == "tokenizer.json" else read_vocab_txt(directory / "vocab.txt")
        tok = wordpiece_pipeline(vocab, s)
    elif name in ("RobertaTokenizer", "GPT2Tokenizer"):
        if layout == "tokenizer.json":
            model = json_model(path)[0]
            vocab = model["vocab"]
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        else:
            vocab, merges = read_bpe_files(directory)
        tok = byte_bpe_pipeline(vocab, merges, s)
    elif name in ("T5Tokenizer", "AlbertTokenizer"):
        if layout == "tokenizer.json":
            model, charsmap = json_model(path)
            pieces = [tuple(p) for p in model["vocab"]]
            control = []
        else:
            proto = read_spiece(directory / "spiece.model")
            pieces = [(p.piece, p.score) for p in proto.pieces]
            charsmap = proto.normalizer_spec.precompiled_charsmap or None
            control = [p.piece for p in proto.pieces if p.type == 3]  # control pieces are special tokens
        if name == "T5Tokenizer":
            n_extra = int(s.get("extra_ids", 100))
            if layout == "spiece.model":
                pieces += [(f"<extra_id_{i}>", 0.0) for i in range(n_extra - 1, -1, -1)]
            if not any("<extra_id_" in str(t) for t in extra):
                extra = extra + [f"<extra_id_{i}>" for i in range(n_extra)]
            tok = t5_pipeline(pieces, charsmap, s)
        else:
            tok = albert_pipeline(pieces, charsmap, s)
        extra = control + [t for t in extra if t not in control]
    elif layout == "tokenizer.json":
        tok = _tokenizer_from_file(path)
    else:
        raise ValueError(f"{directory}: tokenizer_class {name!r} with {layout} is not supported; with "
                         f"{layout}, use BertTokenizer, DistilBertTokenizer, RobertaTokenizer, GPT2Tokenizer, "
                         "T5Tokenizer or AlbertTokenizer, or give a tokenizer.json")
    _add_special_tokens(tok, settings, s, extra)
    tok.post_processor = _post_processor(name, tok, s, path if layout == "tokenizer.json" else None)
    specials = {k: s[k] for k in SPECIAL_KEYS if s.get(k) is not None}
    return Loaded(tok, name, s, specials, tuple(dict.fromkeys(str(t) for t in extra if t)))


def _tokenizer_from_file(path: Path) -> Tokenizer:
    read_json(path)  # named errors for empty, truncated or non-UTF-8 files
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a tokenizers file ({e})") from None


def _post_processor(name: str, tok: Tokenizer, s: dict, json_path: Path | None):
    """The class's template where its recipe sets one after loading (BERT, RoBERTa, T5), else the
    file's post-processor (ALBERT, GPT-2 with a tokenizer.json), else the class's default."""
    recipes = {"BertTokenizer": bert_post, "DistilBertTokenizer": bert_post, "RobertaTokenizer": roberta_post,
               "T5Tokenizer": t5_post}
    if name in recipes:
        return recipes[name](tok, s)
    if json_path is not None:
        data = read_json(json_path)
        if data.get("post_processor") is not None:
            return Tokenizer.from_str(json.dumps({**data, "added_tokens": []})).post_processor
    if name == "AlbertTokenizer":
        return albert_post(tok, s)
    return bos_eos_post(tok, s)


def _add_special_tokens(tok: Tokenizer, settings: dict, s: dict, extra: list) -> None:
    """Added tokens as the reference adds them: those of `added_tokens_decoder` with their flags,
    then every named and extra special token not yet present (special, not normalised)."""
    decoder = settings.get("added_tokens_decoder") or {}
    flagged = []
    for _, t in sorted(decoder.items(), key=lambda kv: int(kv[0])):
        if isinstance(t, dict) and t.get("content"):
            flagged.append(AddedToken(t["content"], single_word=t.get("single_word", False),
                                      lstrip=t.get("lstrip", False), rstrip=t.get("rstrip", False),
                                      normalized=t.get("normalized", not t.get("special", False)),
                                      special=t.get("special", False)))
    for t in flagged:
        (tok.add_special_tokens if t.special else tok.add_tokens)([t])
    present = {t.content for t in flagged} | {t.content for t in tok.get_added_tokens_decoder().values()}
    named = [s[k] for k in SPECIAL_KEYS if s.get(k) is not None] + [t for t in extra if t]
    new = [AddedToken(str(t), special=True, normalized=False) for t in dict.fromkeys(named) if str(t) not in present]
    if new:
        tok.add_special_tokens(new)
