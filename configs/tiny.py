"""Tiny config for tests and smoke runs: seconds to compile and run on one CPU core."""

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("default.py")
    # vocab_size: the default task's SentencePiece vocabulary (config.data.vocab_size), so tiny runs it
    c.model.update(vocab_size=512, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
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
