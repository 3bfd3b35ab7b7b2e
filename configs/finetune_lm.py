"""Causal-LM fine-tuning of a pretrained decoder (GPT-2, Llama, Qwen3, Gemma 3) on text records
({"text"}) or prompt/response pairs ({"prompt", "response"}, the loss on the response only):
perplexity of the targets.

    transformer-jax train --config configs/finetune_lm.py --workdir W --config.init_from=DIR \\
        --config.data.train_files=train.jsonl --config.data.validation_files=dev.jsonl --config.data.test_files=test.jsonl
"""

import os
import runpy


def get_config():
    return runpy.run_path(os.path.join(os.path.dirname(__file__), "_finetune.py"))["finetune"](
        "causal_lm", max_tgt_len=128)
