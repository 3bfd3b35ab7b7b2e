"""Data: tfds sources read without TensorFlow, tokenizers, packing, built-in datasets, metrics.

Importing this package registers the built-in tfds builders ``tjax_numbers``
(the default translation-like task), ``tjax_listops`` (Long Range Arena
ListOps), ``tjax_text`` (English prose that ships with Python),
``tjax_retrieval`` (synthetic long-range key-value retrieval), and ``tjax_digits``
(scikit-learn's 8x8 handwritten digits, images). What a
batch of each task holds lives in ``transformer_jax.tasks``, which this package never imports: the
pipeline takes a ``Layout`` (the task, passed in).
"""

from transformer_jax.data.corpus import TjaxText
from transformer_jax.data.default_task import TjaxNumbers
from transformer_jax.data.framed import Framed
from transformer_jax.data.images import RandomShift, TjaxDigits
from transformer_jax.data.listops import TjaxListops
from transformer_jax.data.listops import evaluate as evaluate_listops
from transformer_jax.data.metrics import accuracy, corpus_bleu, corpus_chrf, exact_match
from transformer_jax.data.pipeline import (
    BatchIterator,
    Featurizer,
    Layout,
    eval_pairs,
    iter_texts,
    make_iterator,
    make_task_tokenizer,
    dataset_records,
    sentencepiece_path,
)
from transformer_jax.data.retrieval import TjaxRetrieval
from transformer_jax.data.sources import DEFAULT_TASK, DatasetNotPreparedError, open_source, prepare
from transformer_jax.data.stats import DataStats
from transformer_jax.data.tokenizers import (
    ByteTokenizer,
    SentencePieceTokenizer,
    TOKENIZER_KINDS,
    Tokenizer,
    WordTokenizer,
    make_tokenizer,
)

__all__ = [
    "BatchIterator",
    "ByteTokenizer",
    "DEFAULT_TASK",
    "DataStats",
    "DatasetNotPreparedError",
    "Featurizer",
    "Framed",
    "Layout",
    "SentencePieceTokenizer",
    "RandomShift",
    "TOKENIZER_KINDS",
    "TjaxDigits",
    "TjaxListops",
    "TjaxNumbers",
    "TjaxRetrieval",
    "TjaxText",
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
    "dataset_records",
    "sentencepiece_path",
]
