"""Data: tfds sources read without TensorFlow, tokenizers, packing, built-in tasks, metrics.

Importing this package registers the built-in tfds builders ``tjax_numbers``
(the default translation-like task) and ``tjax_listops`` (Long Range Arena
ListOps).
"""

from transformer_jax.data.default_task import TjaxNumbers
from transformer_jax.data.listops import TjaxListops
from transformer_jax.data.listops import evaluate as evaluate_listops
from transformer_jax.data.metrics import accuracy, corpus_bleu, corpus_chrf, exact_match
from transformer_jax.data.pipeline import (
    DEFAULT_TASK,
    BatchIterator,
    DatasetNotPreparedError,
    TaskSpec,
    eval_pairs,
    iter_texts,
    make_iterator,
    make_task_tokenizer,
    open_source,
    prepare,
    task_spec,
)
from transformer_jax.data.stats import DataStats
from transformer_jax.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordTokenizer,
    make_tokenizer,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "BatchIterator",
    "ByteTokenizer",
    "DEFAULT_TASK",
    "DataStats",
    "DatasetNotPreparedError",
    "SentencePieceTokenizer",
    "TaskSpec",
    "TjaxListops",
    "TjaxNumbers",
    "Tokenizer",
    "WordTokenizer",
    "accuracy",
    "corpus_bleu",
    "corpus_chrf",
    "eval_pairs",
    "evaluate_listops",
    "exact_match",
    "iter_texts",
    "make_iterator",
    "make_task_tokenizer",
    "make_tokenizer",
    "open_source",
    "prepare",
    "task_spec",
]
