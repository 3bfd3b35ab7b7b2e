"""Causal-LM pretraining (GPT-style) of a small decoder on the built-in `tjax_text` corpus (English
prose that ships with Python; transformer_jax/data/corpus.py). No download.

    transformer-jax train --config configs/lm.py --workdir /tmp/lm
    echo "The if statement" | transformer-jax decode --workdir /tmp/lm --max_new_tokens 32

A 4-layer pre-LN decoder (d_model 128, GELU, learned positions; 1.1M parameters) on packed rows of
128 tokens of a 2,000-piece SentencePiece vocabulary. Eval: perplexity (eval_perplexity) on the
validation split, and on the test split at the end. Any prepared tfds text dataset with a `text`
feature trains the same way, e.g. --config.data.dataset=lm1b once `tfds build lm1b
--file_format=array_record` has run.
"""

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("default.py")
    c.model_type = "decoder_lm"
    c.model.update(vocab_size=2048, d_model=128, num_heads=4, d_ff=512, num_encoder_layers=0,
                   num_decoder_layers=4, dropout_rate=0.1, max_len=256, position="learned",
                   activation="gelu", norm_position="pre", embed_scale=False)
    c.data.update(dataset="tjax_text", tokenizer="sentencepiece", vocab_size=2000, max_src_len=128,
                  max_tgt_len=128, pack=True)
    c.batch_size = 32
    c.num_train_steps = 600
    c.optimizer.update(name="adamw", learning_rate=1e-3, b2=0.98, eps=1e-6, weight_decay=0.01)
    c.schedule.update(name="cosine", warmup_steps=60)
    c.label_smoothing = 0.0
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 200
    c.best_metric = "eval_loss"
    c.decode.update(max_len=32, batch_size=16)
    return c
