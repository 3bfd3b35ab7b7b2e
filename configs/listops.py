"""ListOps (Long Range Arena, Nangia & Bowman 2018): encoder-only 10-way classification on `tjax_listops`.

    transformer-jax train --config configs/listops.py --workdir /tmp/listops --config.budget_minutes=30
    transformer-jax train --config configs/listops.py --workdir /tmp/listops_spt \
        --config.init_from=/tmp/listops_mlm          # after configs/listops_mlm.py (self-pretraining)

The recipe of benchmarks/lra_listops.py's `lra` preset (LRA Table 1's size: 4 layers, d_model 512,
8 heads, d_ff 1024, batch 32), with what helps transformers learn ListOps (Amos et al. 2024): pre-LN,
rotary positions, first-token pooling (LRA's "CLS"), GELU; AdamW with LRA's linear warm-up (1000 steps) and
inverse-square-root decay (peak 1e-3; the schedule needs no total, so `budget_minutes` may end the
run anywhere). Validation every 500 steps; the best checkpoint by validation accuracy is scored on
the test split at the end.
"""

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("default.py")
    c.model.update(vocab_size=64, d_model=512, num_heads=8, d_ff=1024, num_encoder_layers=4,
                   num_decoder_layers=0, num_classes=10, max_len=2048, position="rotary", norm_position="pre",
                   pooling="cls", activation="gelu", dropout_rate=0.1)
    c.data.update(dataset="tjax_listops", tokenizer="listops", max_src_len=2048, max_tgt_len=2, pack=False)
    c.batch_size = 32
    c.num_train_steps = 5000
    # inverse_sqrt: lr = scale * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5); peak 1e-3 at step 1000
    c.optimizer.update(name="adamw", learning_rate=1e-3 * (512 * 1000) ** 0.5, b2=0.98, eps=1e-9, weight_decay=0.01)
    c.schedule.update(name="inverse_sqrt", warmup_steps=1000)
    c.label_smoothing = 0.0
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.best_metric = "eval_accuracy"
    c.best_mode = "max"
    return c
