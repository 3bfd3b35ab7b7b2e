"""Reading the tokenizer files of a pretrained directory, with a named ValueError for each broken
one: `tokenizer_config.json` (+ `special_tokens_map.json`, `added_tokens.json`, the added tokens of
`tokenizer.json`) as the reference library's `from_pretrained` merges them, the tokenizer class, and
the vocabulary sources `tokenizer.json`, `vocab.txt`, `vocab.json` + `merges.txt` and `spiece.model`.
`tokenizer_recipes` builds the pipeline from them.
"""

from __future__ import annotations

import json
from pathlib import Path


ACCEPTED = ("tokenizer.json; vocab.txt (BERT WordPiece); vocab.json + merges.txt (GPT-2/RoBERTa byte-level "
            "BPE); spiece.model (T5, ALBERT SentencePiece); source.spm + target.spm + vocab.json (Marian)")

# config.json model_type -> tokenizer class, when tokenizer_config.json does not name one.
MODEL_TYPE_CLASS = {"bert": "BertTokenizer", "distilbert": "DistilBertTokenizer", "roberta": "RobertaTokenizer",
                    "xlm-roberta": "XLMRobertaTokenizer", "gpt2": "GPT2Tokenizer", "t5": "T5Tokenizer",
                    "mt5": "T5Tokenizer", "albert": "AlbertTokenizer", "marian": "MarianTokenizer"}
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


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


def read_settings(directory: Path, tokenizer_json: dict | None = None) -> dict:
    """tokenizer_config.json, completed as the reference's `from_pretrained` completes it: without an
    `added_tokens_decoder` there, special_tokens_map.json overrides the named tokens and the added
    tokens (with their lstrip/rstrip/normalized flags) come from added_tokens.json and tokenizer.json
    (`tokenizer_json`, already read); a pad token set in tokenizer.json's padding is the default."""
    config = read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
    settings = dict(config)
    if "additional_special_tokens" in settings and not settings.get("extra_special_tokens"):
        settings["extra_special_tokens"] = settings.pop("additional_special_tokens")
    padding = (tokenizer_json or {}).get("padding") or {}
    if padding.get("pad_token") and not settings.get("pad_token"):
        settings["pad_token"] = padding["pad_token"]
    if "added_tokens_decoder" in config:
        return settings
    if (directory / "special_tokens_map.json").is_file():
        for key, value in read_json(directory / "special_tokens_map.json").items():
            if key in ("extra_special_tokens", "additional_special_tokens") and isinstance(value, list):
                existing = list(settings.get("extra_special_tokens") or [])
                settings["extra_special_tokens"] = existing + [t for t in value if t not in existing]
            else:
                settings[key] = {**value, "special": True} if isinstance(value, dict) else value
    decoder = {}
    if (directory / "added_tokens.json").is_file():
        named = {str(token_content(settings.get(k))) for k in SPECIAL_KEYS if settings.get(k)}
        for content, index in read_json(directory / "added_tokens.json").items():
            special = content in named
            decoder[str(index)] = {"content": content, "normalized": not special, "special": special}
    if tokenizer_json is not None:
        for t in tokenizer_json.get("added_tokens") or []:
            if isinstance(t, dict) and "id" in t and "content" in t:
                decoder[str(t["id"])] = {k: v for k, v in t.items() if k != "id"}
    if decoder:
        settings["added_tokens_decoder"] = decoder
    return settings


def class_name(directory: Path, settings: dict, layout: str) -> str:
    name = settings.get("tokenizer_class")
    if not name and (directory / "config.json").is_file():
        model_type = read_json(directory / "config.json").get("model_type")
        name = MODEL_TYPE_CLASS.get(str(model_type))
    if not name:
        name = {"vocab.txt": "BertTokenizer", "vocab.json": "GPT2Tokenizer", "spiece.model": "T5Tokenizer"}.get(
            layout, "PreTrainedTokenizerFast")
    # BertTokenizerFast is BertTokenizer in transformers 5; PreTrainedTokenizerFast is the generic class
    return name[: -len("Fast")] if name.endswith("TokenizerFast") and name != "PreTrainedTokenizerFast" else name


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


def json_model(data: dict, path: Path) -> tuple[dict, bytes | None]:
    """The `model` section of a tokenizer.json (`data`, read from `path`) and its Precompiled
    charsmap (if any)."""
    import base64

    model = data.get("model")
    if not isinstance(model, dict) or "vocab" not in model:
        raise ValueError(f"{path}: no 'model' with a 'vocab'; not a tokenizers file")
    norm = data.get("normalizer") or {}
    parts = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    charsmap = next((base64.b64decode(p["precompiled_charsmap"]) for p in parts
                     if p.get("type") == "Precompiled" and p.get("precompiled_charsmap")), None)
    return model, charsmap
