"""Sequence classification (single texts or pairs; one numeric label = regression) fine-tuned from
a pretrained encoder (BERT, RoBERTa, DistilBERT, ...): accuracy and macro-F1 (Pearson/Spearman).

    transformer-jax train --config configs/finetune_classification.py --workdir W --config.init_from=DIR \\
        --config.data.train_files=train.jsonl --config.data.validation_files=dev.jsonl --config.data.test_files=test.jsonl

Records: {"text": ..., "label": ...} or {"sentence1", "sentence2", "label"} (--config.data.columns to rename).
"""

import os
import runpy


def get_config():
    return runpy.run_path(os.path.join(os.path.dirname(__file__), "_finetune.py"))["finetune"](
        "sequence_classification", max_src_len=128)
