"""Which task a dataset trains: dataset names ("which data") -> tasks ("what is learned").

A dataset with one text feature trains either language model, chosen by `config.model_type`
(`resolve`). Adding a task is its file plus one line in `TASKS`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from transformer_jax.data.sources import base_name
from transformer_jax.tasks.base import Task
from transformer_jax.tasks.classification import Classification, SequenceClassification
from transformer_jax.tasks.image import ImageClassification
from transformer_jax.tasks.language_model import CausalLM, CausalLMFinetune, MaskedLM
from transformer_jax.tasks.question_answering import QuestionAnswering
from transformer_jax.tasks.seq2seq import Seq2Seq, Translation
from transformer_jax.tasks.token_classification import TokenClassification

MODEL_TYPES = ("transformer", "encoder_classifier", "masked_lm", "decoder_lm", "vit")

TASKS = (Translation, Classification, CausalLM, MaskedLM, ImageClassification)
TASK_OF_MODEL = {cls.model_type: cls for cls in TASKS}

# Fine-tuning a pretrained checkpoint on the user's files (`config.task`; train/experiment.py). A new
# task is its file plus one line here.
FINETUNE = {
    "sequence_classification": SequenceClassification,
    "token_classification": TokenClassification,
    "question_answering": QuestionAnswering,
    "seq2seq": Seq2Seq,
    "causal_lm": CausalLMFinetune,
}

# Dataset names (tfds, without config/version) -> their task. A text corpus trains either language
# model (`resolve` switches by model type); tjax_text also has a label (which document a paragraph
# comes from), so it is a classification task for an encoder classifier.
REGISTRY: dict[str, Task] = {
    "tjax_numbers": Translation("source", "target"),
    "tjax_listops": Classification("text", "label"),
    "tjax_retrieval": Classification("text", "label"),
    "tjax_text": CausalLM("text"),
    "imdb_reviews": Classification("text", "label"),
    "lm1b": CausalLM("text"),
    # images (transformer_jax/data/images.py): 8x8 digits built in; mnist, cifar10 once prepared
    "tjax_digits": ImageClassification("image", "label", (8, 8), 1, patch_size=2),
    "mnist": ImageClassification("image", "label", (28, 28), 1, patch_size=4),
    "cifar10": ImageClassification("image", "label", (32, 32), 3, patch_size=4),
}
# ListOps inputs also train a masked LM: self-pretraining on the task's own inputs (Amos et al. 2024).
ALSO = {"tjax_text": {"encoder_classifier": Classification("text", "label")},
        "tjax_listops": {"masked_lm": MaskedLM("text")}}


def for_model(model) -> Task:
    """The default task of a model class (what `create_train_state` and the steps assume when not told)."""
    for cls in TASKS:
        if type(model) is cls().model_class():
            return cls()
    raise ValueError(f"no default task for a {type(model).__name__}; pass task= one of "
                     f"{', '.join(c.__name__ for c in TASKS)}")


def from_features(keys: Sequence[str], features: Any = None) -> Task:
    """A task from explicit feature names: one key is a causal LM; a second integer (ClassLabel)
    key is classification; two text keys are translation (source, target)."""
    keys = tuple(keys)
    if len(keys) == 1:
        return CausalLM(keys[0])
    if len(keys) != 2:
        raise ValueError(f"config.data.text_keys={keys!r} needs 1 key (text) or 2 (source, target / text, label)")
    feature = features[keys[1]] if features is not None and keys[1] in features else None
    if feature is not None and _is_integer(feature):
        return Classification(*keys)
    return Translation(*keys)


def _is_integer(feature) -> bool:
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.ClassLabel):
        return True
    return not isinstance(feature, tfds.features.Text) and np.issubdtype(np.dtype(feature.np_dtype), np.integer)


def lookup(dataset: str, text_keys: Sequence[str] | None = None, features: Any = None) -> Task:
    """The task of a dataset: from `text_keys` if given, else the registry (and wmt*_translate/xx-yy)."""
    if text_keys:
        return from_features(text_keys, features)
    base = base_name(dataset)
    if base in REGISTRY:
        return REGISTRY[base]
    m = re.fullmatch(r"wmt\w*_translate/([a-z]+)-([a-z]+)(:.*)?", dataset)
    if m:
        return Translation(m.group(1), m.group(2))
    raise ValueError(
        f"config.data.dataset={dataset!r} is not a known dataset; pass config.data.text_keys, e.g. ('de', 'en') "
        f"for translation, ('text', 'label') for classification or ('text',) for a language model. "
        f"Known: {', '.join(sorted(REGISTRY))}, wmt*_translate/xx-yy")


def for_dataset(dataset: str, text_keys: Sequence[str] | None = None, *, data_dir=None) -> Task:
    """`lookup` with the stored features read from the dataset's train split when two `text_keys`
    leave open whether the second is a label or a target text."""
    features = None
    if text_keys is not None and len(tuple(text_keys)) == 2:
        from transformer_jax.data.sources import open_source

        features = open_source(dataset, "train", data_dir=data_dir).dataset_info.features
    return lookup(dataset, tuple(text_keys) if text_keys else None, features)


def resolve(dataset: str, model_type: str = "", text_keys: Sequence[str] | None = None,
            features: Any = None) -> Task:
    """The task a run trains: the dataset's, switched to the other language model (or a dataset's
    alternative, e.g. tjax_text's labels) when `model_type` asks for it. An impossible pairing is
    a named error, raised before anything is built."""
    task = lookup(dataset, text_keys, features)
    if not model_type or model_type == task.model_type:
        return task
    if model_type not in MODEL_TYPES:
        raise ValueError(f"config.model_type={model_type!r} is not one of {', '.join(MODEL_TYPES)} (or '' for "
                         "the task's own model)")
    if isinstance(task, CausalLM) and model_type in ("masked_lm", "decoder_lm"):
        return (MaskedLM if model_type == "masked_lm" else CausalLM)(task.text)
    also = ALSO.get(base_name(dataset), {})
    if model_type in also and not text_keys:
        return also[model_type]
    fits = [task.model_type] + ([t for t in ("decoder_lm", "masked_lm") if t != task.model_type]
                                if isinstance(task, CausalLM) else []) + list(also)
    raise ValueError(f"config.model_type={model_type!r} does not fit config.data.dataset={dataset!r} "
                     f"(a {task.name} task); valid for it: {', '.join(fits)}")


def synthetic(model_type: str = "") -> Task:
    """The task of the synthetic in-memory batches (tests, benchmarks): given by the model type."""
    model_type = model_type or "transformer"
    if model_type not in TASK_OF_MODEL:
        raise ValueError(f"config.model_type={model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    return TASK_OF_MODEL[model_type]()
