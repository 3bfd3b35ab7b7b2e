"""Default experiment: the built-in `tjax_numbers` task (digits -> English words), minutes on a laptop CPU.

    transformer-jax train --config configs/default.py --workdir /tmp/numbers

A small post-LN encoder-decoder (3 + 3 layers, d_model 128, 1.45M parameters) on packed rows of a
512-piece SentencePiece BPE vocabulary: AdamW (β2 0.98), warmup + cosine, label smoothing 0.1,
dropout 0.1; BLEU with beam search on the held-out test split at the end.
"""

import ml_collections

from transformer_jax.train.experiment import model_section


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The model follows from the task (transformer_jax/tasks/registry.py: tjax_numbers is translation, so a
    # Transformer). "" = the task's; else checked against it, or it picks the task where a dataset
    # offers several (a text corpus: decoder_lm | masked_lm | encoder_classifier).
    c.model_type = ""
    # Fine-tuning: a workdir of ours or a Hugging Face directory whose matching parameters start the
    # run (ignored once this workdir has its own checkpoint); parameters to freeze, by path regex.
    c.init_from = ""
    c.freeze = ()
    # LoRA (Hu et al. 2021; transformer_jax/train/adapters.py): rank 0 = off. Only the adapters on
    # the `targets` projections (names or path regexes) train, and the parameters init_from leaves
    # fresh (a new head) train in full; checkpoints hold those alone unless save_adapters_only=False.
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=("query", "value"),
                                            save_adapters_only=True))
    # Knowledge distillation (transformer_jax/train/distill.py): a teacher workdir or Hugging Face
    # directory; loss = alpha·CE + (1-alpha)·T²·KL(teacher/T || student/T); init_from_teacher:
    # "every_other" (DistilBERT) or teacher layer indices "0,2,5", one per student layer.
    # sequence_level (translation, seq2seq; train/sequence_kd.py): the teacher's beam outputs (beam_size,
    # length_penalty), made once and cached in the workdir, are the targets; alpha=1: those alone.
    c.distill = ml_collections.ConfigDict(dict(teacher="", temperature=2.0, alpha=0.5, init_from_teacher="",
                                               sequence_level=False, beam_size=4, length_penalty=0.6))
    # Every field of transformer_jax.TransformerConfig, its defaults overridden here (a preset's
    # instead: model_section("base", ...)); attention specs may be strings, e.g. "Windowed(128)".
    c.model = model_section(vocab_size=512, d_model=128, num_heads=4, d_ff=512, num_encoder_layers=3,
                            num_decoder_layers=3, dropout_rate=0.1, max_len=64, dtype="float32")
    c.data = ml_collections.ConfigDict(dict(
        dataset="tjax_numbers", tokenizer="sentencepiece", vocab_size=512,  # SentencePiece BPE pieces
        max_src_len=32, max_tgt_len=32, pack=True, data_dir="",
        train_split="train",  # tfds split syntax, e.g. "train[:8000]": train on part of the split
        text_keys=(),  # source and target feature names, e.g. ("en", "de"); () = the task's default
        eval_split="validation", test_split="test"))
    c.batch_size = 64  # global, in (packed) rows
    c.micro_batches = 1  # gradient accumulation steps inside one train step
    c.num_train_steps = 800
    # Stop after this many minutes of training time (compilation excluded; resumes with what is left;
    # transformer_jax/train/budget.py), or at num_train_steps if sooner. 0: no time budget.
    c.budget_minutes = 0.0
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=2e-3, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, clip_norm=1.0))
    # cosine | linear: learning_rate is the peak. inverse_sqrt: it scales
    # d_model^-0.5 · min(s^-0.5, s·warmup^-1.5) (Vaswani et al. eq. 3; configs/wmt14_base.py).
    c.schedule = ml_collections.ConfigDict(dict(name="cosine", warmup_steps=100, end_learning_rate=0.0))
    c.label_smoothing = 0.1
    c.z_loss = 0.0
    c.nonfinite = "stop"  # stop | skip (keep the previous params for that step)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
    c.log_every = 50
    # "a,b": a jax.profiler trace of steps a..b into <workdir>/profile (TensorBoard's profile plugin
    # or xprof opens it; transformer_jax/train/profile.py); "" = off
    c.profile_steps = ""
    c.eval_every = 400  # 0: never
    c.eval_every_minutes = 0.0  # also evaluate after every this many minutes of training time (0: off)
    c.eval_batches = 0  # 0: the whole eval split
    c.checkpoint_every = 200
    c.keep_checkpoints = 3
    c.best_metric = "eval_loss"  # also kept: the best checkpoint by this metric ("" to disable)
    c.best_mode = "min"
    c.async_checkpoints = True
    c.decode = ml_collections.ConfigDict(dict(
        beam_size=4, length_penalty=0.6, max_len=32, batch_size=128, max_examples=0))
    c.test_at_end = True  # the task's own evaluation on data.test_split (BLEU, accuracy, perplexity)
    return c
