"""Tiny config for tests and smoke runs: seconds to compile and run on one CPU core."""

import importlib.util
import os


def _default():
    """configs/default.py, loaded by path (config files are not a package on sys.path)."""
    spec = importlib.util.spec_from_file_location("_tjax_default", os.path.join(os.path.dirname(__file__), "default.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    c = _default().get_config()
    c.model.update(vocab_size=260, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
                   num_decoder_layers=1, dropout_rate=0.0, max_len=64)
    c.data.update(max_src_len=16, max_tgt_len=48)
    c.batch_size = 8
    c.num_train_steps = 6
    c.optimizer.update(learning_rate=1e-3)
    c.schedule.update(name="linear", warmup_steps=2)
    c.log_every = 1
    c.eval_every = 0
    c.eval_batches = 2
    c.checkpoint_every = 3
    c.decode.update(beam_size=2, max_len=48, batch_size=16, max_examples=16)
    return c
