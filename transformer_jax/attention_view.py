"""`transformer-jax attention`: draw a model's attention weights on one text (the body of the command).

    transformer-jax attention --pretrained DIR --text "..." --output attn.png [--layer 0,1] [--head 2]
    transformer-jax attention --workdir W --text "..." [--target "..."] --json attn.json

The PNG is a grid of layers (rows) x heads (columns), each cell the [query, key] weights of one head
with the tokens as labels on both axes (queries down the side, keys along the bottom). `--layer` and
`--head` take comma-separated indices (negative counts from the end). An encoder-decoder also needs
`--target` (the decoder's text); `--stack` picks which of its `encoder`, `decoder` or `cross`
weights are drawn. `--json` writes the weights in bertviz's layout: the `params` object bertviz's
`head_view`/`model_view` hand their JavaScript, {"attention": [{"name", "attn" [layers][heads]
[queries][keys], "left_text", "right_text"}, ...], "default_filter", "root_div_id", "layer",
"heads", "include_layers"}, one entry per stack (named "Encoder", "Decoder", "Cross" for an
encoder-decoder, as bertviz names them).

The weights come from `tj.attention_weights` (exact for softmax patterns, the implied weights for
Performer). Drawing needs matplotlib (`pip install 'transformer-jax[bench]'`); the JSON does not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

EXTRA = "pip install 'transformer-jax[bench]' (or pip install matplotlib)"
SPECIAL_LABELS = {0: "<pad>", 1: "</s>", 2: "<s>", 3: "<unk>"}  # the library's reserved ids (config.py)


def parse_indices(text: str | None, size: int, flag: str) -> list[int]:
    """'0,2,-1' -> [0, 2, size - 1]; None -> every index; a named error for anything out of range."""
    if text is None:
        return list(range(size))
    out = []
    for part in text.split(","):
        try:
            i = int(part)
        except ValueError:
            raise ValueError(f"{flag}={text!r}: {part!r} is not an integer; give comma-separated indices") from None
        if not -size <= i < size:
            raise ValueError(f"{flag}={text!r}: index {i} is out of range; the model has {size} "
                             f"({', '.join(map(str, range(size)))})")
        out.append(i % size)
    return out


def token_labels(tokenizer, ids, reserved: dict[int, str] | None = None) -> list[str]:
    """A label per id: the tokenizer's own token strings where it has them (`convert_ids_to_tokens`,
    `id_to_token`), else each id decoded alone; `reserved` names special ids that decode to nothing,
    and any other empty piece shows as [id]."""
    ids = [int(i) for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        pieces = tokenizer.convert_ids_to_tokens(ids)
    elif hasattr(tokenizer, "id_to_token"):
        pieces = [tokenizer.id_to_token(i) for i in ids]
    else:
        pieces = [None] * len(ids)
    labels = []
    for i, piece in zip(ids, pieces):
        if piece is not None:
            labels.append(str(piece))
            continue
        try:
            text = tokenizer.decode([i], skip_special_tokens=False)
        except TypeError:  # a tokenizer whose decode takes ids only
            text = tokenizer.decode([i])
        labels.append(text.strip() or (reserved or {}).get(i, f"[{i}]"))
    return labels


# ---- bertviz's layout -----------------------------------------------------------------------------

def bertviz_params(entries: list[tuple[str | None, np.ndarray, list[str], list[str]]], layers: list[int],
                   heads: list[int] | None) -> dict:
    """bertviz's `params`: per entry (name, weights [L, N, T, S] of one example, query tokens, key
    tokens) an `attention` item holding the `layers` only, as bertviz's `include_layers` does."""
    attention = []
    for name, weights, left, right in entries:
        if weights.shape[2:] != (len(left), len(right)):
            raise ValueError(f"weights {weights.shape} do not match {len(left)} query and {len(right)} key tokens")
        attention.append({"name": name, "attn": np.asarray(weights[layers], np.float64).round(6).tolist(),
                          "left_text": list(left), "right_text": list(right)})
    return {"attention": attention, "default_filter": "0", "root_div_id": "bertviz-transformer-jax",
            "layer": layers[0], "heads": heads, "include_layers": layers}


# ---- the picture ----------------------------------------------------------------------------------

def figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(f"drawing attention needs matplotlib, which is not installed: {EXTRA}; "
                         "--json works without it") from None
    return Figure


def draw_grid(weights: np.ndarray, queries: list[str], keys: list[str], layers: list[int], heads: list[int],
              path: str, title: str = "") -> None:
    """Save a PNG: one cell per (layer, head) of weights [L, N, T, S] (one example), tokens on both axes."""
    Figure = figure_class()
    t, s = len(queries), len(keys)
    cell = max(2.0, 0.16 * max(t, s))  # inches: room for one label per token
    fig = Figure(figsize=(cell * len(heads) + 1.0, cell * len(layers) + 0.8), dpi=100, layout="constrained")
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    font = max(4.0, min(8.0, 120.0 / max(t, s)))
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(weights[layer, head], cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal",
                              interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ax.set_xticks(range(s), keys if r == len(layers) - 1 else [""] * s, rotation=90, fontsize=font)
            ax.set_yticks(range(t), queries if c == 0 else [""] * t, fontsize=font)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path)


# ---- loading a model and its inputs ------------------------------------------------------------

def _load_pretrained(directory: str):
    """(model, variables, tokenizer, decoder start id or None, labels: ids -> token strings)."""
    import transformer_jax as tj

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--pretrained={directory!r} is not a directory")
    model, variables = tj.from_pretrained(directory)
    tokenizer = tj.load_tokenizer(directory)
    try:
        start = tj.load_generation_config(directory).decoder_start_id
    except (FileNotFoundError, AttributeError, ValueError):
        start = None
    vocab = tokenizer
    if not hasattr(tokenizer, "convert_ids_to_tokens") and os.path.exists(os.path.join(directory, "tokenizer.json")):
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))  # its pieces, specials included
    return model, variables, tokenizer, start, lambda ids: token_labels(vocab, ids)


def _load_workdir(workdir: str, which: str):
    from transformer_jax.config import BOS_ID
    from transformer_jax.train import loop

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} is not a directory; train there first")
    config = loop.load_config(workdir)
    s, state, _ = loop.restore_for_eval(config, workdir, which=which)
    labels = lambda ids: token_labels(s.tokenizer, ids, SPECIAL_LABELS)  # noqa: E731
    return s.model, {"params": s.eval_params(state)}, s.tokenizer, BOS_ID, labels


def model_inputs(model, tokenizer, text: str, target: str | None, start: int | None, own_tokens: bool):
    """(positional inputs, keyword inputs, query/key token ids per stack) for one text.

    Library workdirs frame text as their tasks do (language models start with BOS, sources and
    masked-LM inputs end with EOS); pretrained tokenizers add their own special tokens.
    """
    from transformer_jax.config import BOS_ID, EOS_ID
    from transformer_jax.model import DecoderLM, MaskedLM, Transformer
    from transformer_jax.vit import ViT

    if isinstance(model, ViT):
        raise ValueError("the attention command reads text; for a ViT call tj.attention_weights(model, "
                         "variables, images) from Python")
    ids = list(tokenizer.encode(text))
    if not ids:
        raise ValueError(f"--text={text!r} encodes to no tokens")
    cfg = model.cfg
    if isinstance(model, Transformer):
        if target is None:
            raise ValueError(f"{type(model).__name__} is an encoder-decoder: give the decoder's text with --target")
        src = ids + [EOS_ID] if own_tokens else ids
        tgt = [BOS_ID if start is None else start] + list(tokenizer.encode(target))  # shifted right
        return (np.asarray([src], np.int32), np.asarray([tgt], np.int32)), {}, {"src": src, "tgt": tgt}
    if target is not None:
        raise ValueError(f"--target is for encoder-decoders; {type(model).__name__} reads --text only")
    if own_tokens and isinstance(model, DecoderLM):
        ids = [BOS_ID] + ids
    elif own_tokens and isinstance(model, MaskedLM):
        ids = ids + [EOS_ID]
    kw = {"token_types": np.zeros((1, len(ids)), np.int32)} if cfg.type_vocab_size else {}
    return (np.asarray([ids], np.int32),), kw, {"src": ids, "tgt": ids}


# ---- the command ----------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transformer-jax attention", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained", help="a Hugging Face model directory (with its tokenizer)")
    source.add_argument("--workdir", help="a training workdir of this library")
    p.add_argument("--checkpoint", choices=["latest", "best"], default="latest", help="--workdir: which checkpoint")
    p.add_argument("--text", required=True, help="the text to read")
    p.add_argument("--target", help="encoder-decoders: the decoder's text")
    p.add_argument("--output", help="PNG to draw (needs matplotlib)")
    p.add_argument("--json", help="JSON file of the weights in bertviz's layout")
    p.add_argument("--layer", help="comma-separated layers to show (default: all)")
    p.add_argument("--head", help="comma-separated heads to show (default: all)")
    p.add_argument("--stack", choices=["encoder", "decoder", "cross"], default=None,
                   help="encoder-decoders: which weights to draw (default: encoder)")
    return p


def run(args) -> dict:
    """Load, compute and write; returns what was written (for tests and the summary line)."""
    import transformer_jax as tj

    if not args.output and not args.json:
        raise ValueError("give --output FILE.png (a picture) and/or --json FILE (bertviz's layout)")
    if args.output:
        figure_class()  # fail before loading the model
    if args.pretrained:
        model, variables, tokenizer, start, labels = _load_pretrained(args.pretrained)
    else:
        model, variables, tokenizer, start, labels = _load_workdir(args.workdir, args.checkpoint)
    inputs, kw, ids = model_inputs(model, tokenizer, args.text, args.target, start, own_tokens=not args.pretrained)
    weights = tj.attention_weights(model, variables, *inputs, **kw)
    src, tgt = labels(ids["src"]), labels(ids["tgt"])
    if isinstance(weights, dict):
        stacks = {"encoder": ("Encoder", src, src), "decoder": ("Decoder", tgt, tgt), "cross": ("Cross", tgt, src)}
        arrays = {kind: np.stack([np.asarray(w[0]) for w in weights[kind]]) for kind in stacks}  # [L N T S]
        entries = [(name, arrays[kind], left, right) for kind, (name, left, right) in stacks.items()]
        drawn = args.stack or "encoder"
        _, queries, keys = stacks[drawn]
    else:
        if args.stack not in (None, "encoder", "decoder"):
            raise ValueError(f"--stack={args.stack!r} is for encoder-decoders; {type(model).__name__} has one stack")
        drawn = "self"
        arrays = {drawn: np.stack([np.asarray(w[0]) for w in weights])}
        entries, queries, keys = [(None, arrays[drawn], src, src)], src, src
    num_layers, num_heads = arrays[drawn].shape[:2]
    layers = parse_indices(args.layer, num_layers, "--layer")
    heads = parse_indices(args.head, num_heads, "--head")
    written = {}
    if args.json:
        params = bertviz_params(entries, layers, None if args.head is None else heads)
        with open(args.json, "w") as f:
            json.dump(params, f)
        written["json"] = args.json
    if args.output:
        name = args.pretrained or args.workdir
        draw_grid(arrays[drawn], queries, keys, layers, heads, args.output,
                  title=f"{os.path.basename(os.path.normpath(name))}: {drawn} attention")
        written["png"] = args.output
    return written


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        written = run(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print("wrote " + ", ".join(written.values()), file=sys.stderr)
    return 0
