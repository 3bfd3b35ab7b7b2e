"""ListOps (Long Range Arena, Nangia & Bowman 2018): encoder-only 10-way classification on `tjax_listops`."""

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("default.py")
    c.model.update(vocab_size=64, d_model=128, num_heads=4, d_ff=512, num_encoder_layers=4,
                   num_decoder_layers=0, num_classes=10, max_len=2048, position="sinusoidal")
    c.data.update(task="tjax_listops", tokenizer="listops", max_src_len=2048, max_tgt_len=2, pack=False)
    c.batch_size = 32
    c.num_train_steps = 5000
    c.optimizer.update(name="adamw", learning_rate=5e-4, b2=0.98, eps=1e-9, weight_decay=0.1)
    c.schedule.update(name="cosine", warmup_steps=500)
    c.label_smoothing = 0.0
    c.best_metric = "eval_accuracy"
    c.best_mode = "max"
    return c
