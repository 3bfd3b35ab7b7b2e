"""Tasks: what a batch of each task holds, which model trains on it, how it is scored.

One file per task (classification, token_classification, question_answering, seq2seq,
language_model, image), each a frozen dataclass that
declares its batch fields once (`base.Field`); padding, packing names, batch shapes and model inputs
are derived from that declaration (`base.Task`). `registry` maps dataset names to tasks. Evaluation
receives a `Predictor` (model, params, tokenizer, mesh), never the trainer's setup.

Layer 3 of the library (GUIDE.md): imports data / decode / pretrained and below, never train/ or cli.
"""

from transformer_jax.tasks.base import Field, Task
from transformer_jax.tasks.classification import Classification
from transformer_jax.tasks.image import ImageClassification
from transformer_jax.tasks.language_model import CausalLM, MaskedLM, MaskTokens, continue_text
from transformer_jax.tasks.predictor import Predictor, model_params
from transformer_jax.tasks.registry import (ALSO, FINETUNE, MODEL_TYPES, REGISTRY, TASK_OF_MODEL, TASKS, for_dataset,
                                            for_model, from_features, lookup, resolve, synthetic)
from transformer_jax.tasks.seq2seq import Translation, translate

__all__ = ["ALSO", "FINETUNE", "CausalLM", "Classification", "Field", "ImageClassification", "MODEL_TYPES", "MaskTokens",
           "MaskedLM", "Predictor", "REGISTRY", "TASKS", "TASK_OF_MODEL", "Task", "Translation", "continue_text",
           "for_dataset", "for_model", "from_features", "lookup", "model_params", "resolve", "synthetic",
           "translate"]
