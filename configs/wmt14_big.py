"""WMT14 en-de, Transformer (big): Vaswani et al. 2017, Table 3 (d_model 1024, 16 heads, d_ff 4096,
dropout 0.3), otherwise the base recipe; 300k steps."""

import importlib.util
import os


def _default():
    """configs/default.py, loaded by path (config files are not a package on sys.path)."""
    spec = importlib.util.spec_from_file_location("_tjax_default", os.path.join(os.path.dirname(__file__), "default.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base():
    spec = importlib.util.spec_from_file_location("_tjax_wmt14_base", os.path.join(os.path.dirname(__file__), "wmt14_base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    c = _base().get_config()
    c.model = c.model.__class__(dict(preset="big", vocab_size=37_000, max_len=256, dropout_rate=0.3,
                                     dtype="bfloat16"))
    c.num_train_steps = 300_000
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c
