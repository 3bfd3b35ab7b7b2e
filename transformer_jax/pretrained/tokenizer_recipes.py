"""A `tokenizers.Tokenizer` pipeline for a pretrained directory, built the way the reference library
(transformers 5) builds it, so that ids, offsets and word ids match it exactly.

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

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece

from transformer_jax.pretrained.tokenizer_files import (ACCEPTED, SPECIAL_KEYS, class_name, json_model,
                                                        read_bpe_files, read_json, read_settings, read_spiece,
                                                        read_vocab_txt, token_content)

# The classes whose outputs include token_type_ids (their `model_input_names`); all others give
# input_ids + attention_mask, as the reference's base class does.
WITH_TOKEN_TYPES = {"BertTokenizer", "ConvBertTokenizer", "MarkupLMTokenizer"}


@dataclass(frozen=True)
class Loaded:
    """A built pipeline plus what the reference keeps beside it."""

    backend: Tokenizer
    class_name: str
    settings: dict  # tokenizer_config.json (+ special_tokens_map.json), with defaults of the class
    special_tokens: dict = field(default_factory=dict)  # "cls_token" -> "[CLS]", ...
    extra_special_tokens: tuple = ()


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
    add_bos = bool(s.get("add_bos_token")) and bos is not None
    add_eos = bool(s.get("add_eos_token")) and eos is not None
    single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
    pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
    special = ([(bos, tok.token_to_id(bos))] if add_bos else []) + ([(eos, tok.token_to_id(eos))] if add_eos else [])
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def t5_pipeline(pieces: list[tuple[str, float]], charsmap: bytes | None, s: dict) -> Tokenizer:
    tok = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    if charsmap:
        tok.normalizer = normalizers.Precompiled(charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
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


# Each known class's special-token defaults (its __init__ arguments in the reference).
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
    data = read_json(directory / "tokenizer.json") if (directory / "tokenizer.json").is_file() else None
    settings = read_settings(directory, data)
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
        vocab = (json_model(data, path)[0]["vocab"] if layout == "tokenizer.json"
                 else read_vocab_txt(directory / "vocab.txt"))
        tok = wordpiece_pipeline(vocab, s)
    elif name in ("RobertaTokenizer", "GPT2Tokenizer"):
        if layout == "tokenizer.json":
            model = json_model(data, path)[0]
            vocab = model["vocab"]
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        else:
            vocab, merges = read_bpe_files(directory)
        tok = byte_bpe_pipeline(vocab, merges, s)
    elif name in ("T5Tokenizer", "AlbertTokenizer"):
        if layout == "tokenizer.json":
            model, charsmap = json_model(data, path)
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
        try:
            tok = Tokenizer.from_str(json.dumps(data))
        except Exception as e:
            raise ValueError(f"{path}: not a tokenizers file ({e})") from None
    else:
        raise ValueError(f"{directory}: tokenizer_class {name!r} with {layout} is not supported; with "
                         f"{layout}, use BertTokenizer, DistilBertTokenizer, RobertaTokenizer, GPT2Tokenizer, "
                         "T5Tokenizer or AlbertTokenizer, or give a tokenizer.json")
    _add_special_tokens(tok, settings, s, extra)
    tok.post_processor = _post_processor(name, tok, s, data if layout == "tokenizer.json" else None)
    tok.no_truncation()  # a tokenizer.json may carry them; each call sets its own (as the reference)
    tok.no_padding()
    specials = {k: s[k] for k in SPECIAL_KEYS if s.get(k) is not None}
    return Loaded(tok, name, s, specials, tuple(dict.fromkeys(str(t) for t in extra if t)))


def _file_post_processor(data: dict):
    """tokenizer.json's post-processor, parsed beside an empty model (the vocabulary is not needed)."""
    empty = {**data, "added_tokens": [], "model": {"type": "WordLevel", "vocab": {}, "unk_token": "<unk>"}}
    return Tokenizer.from_str(json.dumps(empty)).post_processor


def _post_processor(name: str, tok: Tokenizer, s: dict, tokenizer_json: dict | None):
    """The class's template where its recipe sets one after loading (BERT, RoBERTa, T5), else the
    file's post-processor (ALBERT, GPT-2 with a tokenizer.json), else the class's default."""
    recipes = {"BertTokenizer": bert_post, "DistilBertTokenizer": bert_post, "RobertaTokenizer": roberta_post,
               "T5Tokenizer": t5_post}
    if name in recipes:
        return recipes[name](tok, s)
    if tokenizer_json is not None and tokenizer_json.get("post_processor") is not None:
        return _file_post_processor(tokenizer_json)
    if name == "AlbertTokenizer":
        return albert_post(tok, s)
    return bos_eos_post(tok, s)


def _added_token(value: dict) -> AddedToken:
    special = bool(value.get("special", False))
    return AddedToken(value["content"], single_word=value.get("single_word", False), lstrip=value.get("lstrip", False),
                      rstrip=value.get("rstrip", False), normalized=value.get("normalized", not special),
                      special=special)


def _add_special_tokens(tok: Tokenizer, settings: dict, s: dict, extra: list) -> None:
    """Added tokens as the reference adds them: those of `added_tokens_decoder` with their flags,
    then every named and extra special token not yet present (special, not normalised, unless the
    config gives it as a dict with flags)."""
    decoder = settings.get("added_tokens_decoder") or {}
    flagged = [_added_token(t) for _, t in sorted(decoder.items(), key=lambda kv: int(kv[0]))
               if isinstance(t, dict) and t.get("content")]
    for t in flagged:
        (tok.add_special_tokens if t.special else tok.add_tokens)([t])
    present = {t.content for t in flagged} | {t.content for t in tok.get_added_tokens_decoder().values()}
    named = [settings.get(k) if isinstance(settings.get(k), dict) else s[k] for k in SPECIAL_KEYS
             if s.get(k) is not None] + [t for t in extra if t]
    new, seen = [], set()
    for t in named:
        content = str(token_content(t))
        if content in present or content in seen:
            continue
        seen.add(content)
        new.append(_added_token({**t, "special": True}) if isinstance(t, dict)
                   else AddedToken(content, special=True, normalized=False))
    if new:
        tok.add_special_tokens(new)
