"""Extractive question answering (SQuAD v1.1 JSON, or JSONL with question/context/answers) fine-tuned
from a pretrained encoder: windows of max_src_len tokens overlapping by doc_stride; SQuAD exact match
and F1.

    transformer-jax train --config configs/finetune_qa.py --workdir W --config.init_from=DIR \\
        --config.data.train_files=train.json --config.data.validation_files=dev.json --config.data.test_files=dev.json
"""

import os
import runpy


def get_config():
    return runpy.run_path(os.path.join(os.path.dirname(__file__), "_finetune.py"))["finetune"](
        "question_answering", max_src_len=256, doc_stride=64)
