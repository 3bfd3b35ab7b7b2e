"""Token classification (named entities) fine-tuned from a pretrained encoder: seqeval's entity-level
precision, recall and F1. Records: {"tokens": [...], "ner_tags": [...]} (tags by name or id).

    transformer-jax train --config configs/finetune_ner.py --workdir W --config.init_from=DIR \\
        --config.data.train_files=train.jsonl --config.data.validation_files=dev.jsonl --config.data.test_files=test.jsonl
"""

import os
import runpy


def get_config():
    return runpy.run_path(os.path.join(os.path.dirname(__file__), "_finetune.py"))["finetune"](
        "token_classification", max_src_len=128)
