"""The README figure: one sentence read by one model under each attention pattern, side by side.

    python benchmarks/attention_patterns.py [--output benchmarks/results/attention_patterns.png]

The model is the tiny BERT fixture (tests/fixtures/pretrained/bert, random weights, tokenizer from
tests/fixtures/attention) with its encoder's pattern swapped: `Dense`, `Windowed`, BigBird's
`BlockSparse` (window, global and random blocks) and `Performer` (the weights its random features
imply). Top row: the weights of layer 0, head 0 from `tj.attention_weights`; grey cells lie outside
the pattern (exactly zero). Bottom row: each pattern as `spec.mask()` states it, BlockSparse's
blocks coloured by kind. Needs matplotlib (`pip install 'transformer-jax[bench]'`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np

import transformer_jax as tj
from transformer_jax.attention import BlockSparse, Dense, Performer, Windowed
from transformer_jax.attention_view import figure_class

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "results", "attention_patterns.png")
SENTENCE = ("Sparse attention reads a window of neighbours, a few global tokens and some random blocks. "
            "The encoder reads the source sentence and the decoder writes the translation.")
SPECS = {
    "Dense": Dense(backend="xla"),
    "Windowed(3)": Windowed(3),
    "BlockSparse (BigBird)\nblock 4, 3 window, 1 global, 1 random": BlockSparse(
        block_size=4, window_blocks=3, global_blocks=1, random_blocks=1, seed=0),
    "Performer(64 features)\nimplied weights": Performer(num_features=64, seed=0),
}


def model_dir(tmp: str) -> str:
    """The BERT fixture's weights beside the attention fixture's tokenizer, as one model directory."""
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(FIXTURES, "pretrained", "bert", name), tmp)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURES, "attention", name), tmp)
    return tmp


def block_kinds(spec: BlockSparse, n: int) -> np.ndarray:
    """[n, n] ints: 0 outside the pattern, 1 window, 2 global (rows or columns), 3 random blocks."""
    b, nb = spec.block_size, -(-n // spec.block_size)
    g = min(spec.global_blocks, nb)
    kinds = np.zeros((nb, nb), int)
    table = spec.block_table(nb)  # rows g..: window columns, then global, then random
    for row, blocks in enumerate(table, start=g):
        for col, block in enumerate(blocks):
            if block >= 0:
                kinds[row, block] = 1 if col < spec.window_blocks else 2 if col < spec.window_blocks + g else 3
    kinds[:g] = 2
    return np.repeat(np.repeat(kinds, b, 0), b, 1)[:n, :n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    Figure = figure_class()
    import matplotlib
    import matplotlib.patches
    from matplotlib.colors import ListedColormap

    with tempfile.TemporaryDirectory() as tmp:
        directory = model_dir(tmp)
        model, variables = tj.from_pretrained(directory)
        tokenizer = tj.load_tokenizer(directory)
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    ids = np.asarray([tokenizer.encode(SENTENCE)], np.int32)
    tokens = [vocab.id_to_token(int(i)) for i in ids[0]]
    n = len(tokens)
    fig = Figure(figsize=(4.2 * len(SPECS), 8.6), dpi=110, layout="constrained")
    axes = fig.subplots(2, len(SPECS), squeeze=False)
    weight_map = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    kind_map = ListedColormap(["#ffffff", "#4c72b0", "#dd8452", "#55a868"])
    for c, (title, spec) in enumerate(SPECS.items()):
        swapped = type(model)(model.cfg.replace(encoder_attention=spec))
        weights = np.asarray(tj.attention_weights(swapped, variables, ids, token_types=np.zeros_like(ids))[0][0, 0])
        pattern = spec.mask(n, n)
        top = axes[0][c].imshow(np.ma.masked_array(weights, ~pattern), cmap=weight_map, vmin=0, vmax=0.5,
                                interpolation="nearest")
        axes[0][c].set_title(title, fontsize=9)
        if isinstance(spec, BlockSparse):
            kinds = block_kinds(spec, n)
            assert ((kinds > 0) == pattern).all()
        else:
            kinds = pattern.astype(int)
        axes[1][c].imshow(kinds, cmap=kind_map, vmin=0, vmax=3, interpolation="nearest")
        axes[1][c].set_title(f"pattern: {pattern.mean():.0%} of the {n} x {n} pairs", fontsize=9)
        for r in range(2):
            ax = axes[r][c]
            ax.set_xticks(range(n), tokens, rotation=90, fontsize=5)
            ax.set_yticks(range(n), tokens if c == 0 else [""] * n, fontsize=5)
    fig.colorbar(top, ax=axes[0].tolist(), shrink=0.7, label="weight (layer 0, head 0); grey: outside the pattern")
    handles = [matplotlib.patches.Patch(color=kind_map(i), label=label)
               for i, label in ((1, "window (Dense, Windowed: every visible pair)"), (2, "global blocks"),
                                (3, "random blocks"))]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(f"One sentence ({n} tokens), one model, four attention patterns: tj.attention_weights", fontsize=11)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
