"""WMT14 en-de, Transformer (base): Vaswani et al. 2017, §5 and Table 3.

Adam β1 0.9, β2 0.98, ε 1e-9; lr = d_model^-0.5 · min(s^-0.5, s · 4000^-1.5); label smoothing 0.1;
dropout 0.1; shared 37k SentencePiece vocabulary; ~25k source + 25k target tokens per batch
(here: packed rows of 256 tokens, 96 rows ≈ 24.6k tokens); 100k steps.
"""

import os
import runpy

from transformer_jax.train.experiment import model_section


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("default.py")
    c.model = model_section("base", vocab_size=37_000, max_len=256, dropout_rate=0.1, dtype="bfloat16")
    c.data.update(dataset="wmt14_translate/de-en", text_keys=("en", "de"),  # English -> German, as in the paper
                  tokenizer="sentencepiece", vocab_size=37_000,
                  max_src_len=256, max_tgt_len=256, pack=True, test_split="test")
    c.batch_size = 96
    c.num_train_steps = 100_000
    c.optimizer.update(name="adam", learning_rate=1.0, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, clip_norm=0.0)
    c.schedule.update(name="inverse_sqrt", warmup_steps=4000)
    c.label_smoothing = 0.1
    c.log_every, c.eval_every, c.checkpoint_every = 100, 5000, 2000
    c.decode.update(beam_size=4, length_penalty=0.6, max_len=256, batch_size=64, max_examples=0)
    return c
