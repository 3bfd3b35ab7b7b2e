"""A small classification task on the built-in `tjax_text` corpus: does a paragraph come from the
Python Language Reference (label 0) or from a standard-library docstring (label 1)? The encoder of
configs/mlm.py with a pooler and classifier head, so it can start from a masked-LM workdir:

    transformer-jax train --config configs/text_classifier.py --workdir /tmp/cls \
        --config.init_from=/tmp/mlm    # encoder, embeddings and its tokenizer; pooler, classifier fresh
    transformer-jax train --config configs/text_classifier.py --workdir /tmp/cls_scratch   # baseline

Optionally --config.freeze="('encoder/.*',)" trains the head alone.
"""

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("mlm.py")
    c.model_type = "encoder_classifier"  # tjax_text's labels
    c.data.update(pack=False)
    c.batch_size = 32
    c.num_train_steps = 200
    c.optimizer.update(learning_rate=5e-4, weight_decay=0.01)
    c.schedule.update(name="linear", warmup_steps=20)
    c.eval_every = 100
    c.checkpoint_every = 100
    c.best_metric = "eval_accuracy"
    c.best_mode = "max"
    return c
