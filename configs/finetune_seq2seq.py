"""Summarization or translation fine-tuned from a pretrained encoder-decoder (T5, BART, Marian):
ROUGE-1/2/L and BLEU of the generated outputs. `data.prefix` goes before every source (T5:
"summarize: "). Records: {"source"/"document", "target"/"summary"}.

    transformer-jax train --config configs/finetune_seq2seq.py --workdir W --config.init_from=DIR \\
        --config.data.train_files=train.jsonl --config.data.validation_files=dev.jsonl --config.data.test_files=test.jsonl
"""

import os
import runpy


def get_config():
    c = runpy.run_path(os.path.join(os.path.dirname(__file__), "_finetune.py"))["finetune"](
        "seq2seq", max_src_len=256, max_tgt_len=64, prefix="")
    c.optimizer.learning_rate = 3e-4
    return c
