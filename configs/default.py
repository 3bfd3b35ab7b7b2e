"""Default experiment: the built-in `tjax_numbers` task (digits -> English words), minutes on a laptop CPU.

    transformer-jax train --config configs/default.py --workdir /tmp/numbers

A small encoder-decoder (3 + 3 layers, d_model 256) with the paper's recipe: Adam β2 0.98,
inverse-sqrt schedule with warmup, label smoothing 0.1; BLEU with beam search on the test split.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model_type = "transformer"  # transformer | encoder_classifier | masked_lm | decoder_lm
    # Fields of transformer_jax.TransformerConfig (optionally `preset`: tiny | base | big, then overrides).
    c.model = ml_collections.ConfigDict(dict(
        preset="", vocab_size=260, d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3,
        num_decoder_layers=3, dropout_rate=0.1, max_len=128, dtype="float32"))
    c.data = ml_collections.ConfigDict(dict(
        task="tjax_numbers", tokenizer="byte", vocab_size=0,  # vocab_size: SentencePiece pieces (0: n/a)
        max_src_len=32, max_tgt_len=64, pack=False, data_dir="",
        text_keys=(),  # source and target feature names, e.g. ("en", "de"); () = the task's default
        eval_split="validation", test_split="test"))
    c.batch_size = 64  # global, in sequences
    c.micro_batches = 1  # gradient accumulation steps inside one train step
    c.num_train_steps = 3000
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=2.0, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, clip_norm=1.0))
    # inverse_sqrt: learning_rate scales d_model^-0.5 · min(s^-0.5, s·warmup^-1.5) (Vaswani et al. eq. 3).
    c.schedule = ml_collections.ConfigDict(dict(name="inverse_sqrt", warmup_steps=400, end_learning_rate=0.0))
    c.label_smoothing = 0.1
    c.z_loss = 0.0
    c.nonfinite = "stop"  # stop | skip (keep the previous params for that step)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.log_every = 50
    c.eval_every = 1000  # 0: never
    c.eval_batches = 0  # 0: the whole eval split
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.best_metric = "eval_loss"  # also kept: the best checkpoint by this metric ("" to disable)
    c.best_mode = "min"
    c.async_checkpoints = True
    c.decode = ml_collections.ConfigDict(dict(
        beam_size=4, length_penalty=0.6, max_len=64, batch_size=64, max_examples=0, bleu_at_end=True))
    return c
