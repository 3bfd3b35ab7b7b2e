"""WMT14 en-de, Transformer (big): Vaswani et al. 2017, Table 3 (d_model 1024, 16 heads, d_ff 4096,
dropout 0.3), otherwise the base recipe; 300k steps."""

import os
import runpy

from transformer_jax.train.experiment import model_section


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("wmt14_base.py")
    c.model = model_section("big", vocab_size=37_000, max_len=256, dropout_rate=0.3, dtype="bfloat16")
    c.num_train_steps = 300_000
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c
