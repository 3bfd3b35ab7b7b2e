"""Long sequences: encoder self-attention restricted to a sliding window (O(n·w)) on 4k-token sources.

Swap in `BlockSparse(block_size=64)` (BigBird-style) for `Windowed` to compare patterns, here or on
the command line: --config.model.encoder_attention='BlockSparse(block_size=64)' (or a tuple of
specs, one per layer).
"""

from transformer_jax.attention import BlockSparse, Windowed  # noqa: F401

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("default.py")
    c.model.update(max_len=4096, d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=4,
                   num_decoder_layers=2)
    c.model.encoder_attention = Windowed(window=128)
    c.data.update(max_src_len=4096, max_tgt_len=128, pack=True)
    c.batch_size = 16
    c.micro_batches = 2
    return c
