"""Masked-LM pretraining (BERT, Devlin et al. 2019) of a small encoder on the built-in `tjax_text`
corpus: English prose that ships with Python (the Language Reference of `help()` and standard-library
docstrings; transformer_jax/data/corpus.py). No download.

    transformer-jax train --config configs/mlm.py --workdir /tmp/mlm

A 4-layer BERT-style encoder (d_model 128, GELU, learned positions, embedding norm, pre-LN for a
stable short schedule; 1.1M parameters) on packed rows of 128 tokens of a 2,000-piece SentencePiece
vocabulary with a [MASK] piece. 15% of the tokens are selected (80% [MASK], 10% random, 10% kept),
seeded by the example index, so a resumed run sees the same masks. Eval: masked-token accuracy and
perplexity (eval_accuracy, eval_perplexity) on the validation split, and on the test split at the end.
Fine-tune a classifier from it with configs/text_classifier.py and --config.init_from=/tmp/mlm.
"""

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("default.py")
    c.model_type = "masked_lm"  # tjax_text is a text corpus: masked_lm picks the masked-LM task
    c.model.update(vocab_size=2048, d_model=128, num_heads=4, d_ff=512, num_encoder_layers=4,
                   num_decoder_layers=0, dropout_rate=0.1, max_len=128, position="learned",
                   activation="gelu", norm_position="pre", embed_norm=True, embed_scale=False,
                   logits_bias=True, num_classes=2)
    c.data.update(dataset="tjax_text", tokenizer="sentencepiece", vocab_size=2000, max_src_len=128,
                  max_tgt_len=128, pack=True)
    c.batch_size = 32
    c.num_train_steps = 600
    c.optimizer.update(name="adamw", learning_rate=1e-3, b2=0.98, eps=1e-6, weight_decay=0.01)
    c.schedule.update(name="linear", warmup_steps=60)
    c.label_smoothing = 0.0
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 200
    c.best_metric = "eval_accuracy"
    c.best_mode = "max"
    return c
