"""Key-value retrieval (`tjax_retrieval`, transformer_jax/data/retrieval.py): a long-range task on which
attention patterns differ. An encoder classifier reads the class marker's final state (`pooling='cls'`);
the query key sits at the other end of the sequence, so a `Windowed` model cannot answer (chance, 10 %)
while `Dense` or `BlockSparse` with global blocks can.

    transformer-jax train --config configs/retrieval.py --workdir /tmp/retrieval \
        --config.model.encoder_attention='Windowed(32)' --config.budget_minutes=5

One character per token (byte tokenizer). Pre-LN, rotary positions, a small model (2 layers,
d_model 64); AdamW with linear warm-up and inverse-square-root decay (no total step count, so a
time budget can end the run anywhere); evaluation on the validation split after every
`eval_every_minutes` of training time, the best checkpoint by accuracy scored on the test split.
"""

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("default.py")
    c.model.update(vocab_size=260, d_model=64, num_heads=4, d_ff=256, num_encoder_layers=2,
                   num_decoder_layers=0, num_classes=10, max_len=512, position="rotary", norm_position="pre",
                   pooling="cls", activation="gelu", dropout_rate=0.0)
    c.data.update(dataset="tjax_retrieval/small", tokenizer="byte", max_src_len=512, max_tgt_len=2, pack=False)
    c.batch_size = 32
    c.num_train_steps = 100_000  # a cap: the time budget ends the run
    c.budget_minutes = 5.0
    # inverse_sqrt: lr = scale * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5), peak 2e-3 at step 100
    c.optimizer.update(name="adamw", learning_rate=2e-3 * (64 * 100) ** 0.5, b2=0.98, eps=1e-9,
                       weight_decay=0.01)
    c.schedule.update(name="inverse_sqrt", warmup_steps=100)
    c.label_smoothing = 0.0
    c.log_every = 25
    c.eval_every = 0
    c.eval_every_minutes = 1.0
    c.eval_batches = 8  # 256 validation examples per periodic eval (the test split is scored whole)
    c.checkpoint_every = 100_000
    c.keep_checkpoints = 1
    c.best_metric = "eval_accuracy"
    c.best_mode = "max"
    return c
