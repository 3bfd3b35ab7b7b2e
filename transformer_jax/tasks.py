"""Tasks as values: what a batch of each task holds, which model trains on it, how it is scored.

A task is a small frozen dataclass (like an attention spec): it names the features it reads, turns a
record into token arrays (`featurize`), lays examples out in fixed-shape rows (`pad`, or packed by
`pack_lengths` + `unpack_names`), says which model class it trains (`model_type`), splits a batch
into the model's inputs (`model_inputs`) and its targets and loss weights (`targets_and_weights`),
and names its end-of-run metric. Everything that used to be guessed from a batch's keys lives here.

Batch layouts (int32; ids 0 pad, 1 EOS, 2 BOS, 3 UNK; segment ids start at 1 in each row, 0 is
padding; positions restart at 0 in every segment):

  Translation     src, src_segment_ids, src_positions [B, S]
                  tgt_in, tgt_out, tgt_segment_ids, tgt_positions [B, T]
                  (src = tokens + EOS; tgt_in = BOS + tokens; tgt_out = tokens + EOS)
  Classification  inputs, segment_ids, positions [B, S]; label [B]
  CausalLM        inputs, targets, segment_ids, positions [B, T]  (inputs = BOS + tokens; targets = tokens + EOS)
  MaskedLM        inputs, targets, segment_ids, positions [B, S]  (inputs = the corrupted tokens + EOS;
                  targets = the original token at the selected positions, 0 (no loss) elsewhere)
  Image           image uint8 [B, H, W, C]; label int32 [B]; weights float32 [B] (0 for fill rows)

`REGISTRY` maps dataset names to tasks; a dataset with one text feature trains either language
model, chosen by `config.model_type` (`resolve`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Union

import numpy as np

from transformer_jax.config import BOS_ID, EOS_ID

MODEL_TYPES = ("transformer", "encoder_classifier", "masked_lm", "decoder_lm", "vit")


def _i32(ids) -> np.ndarray:
    return np.asarray(ids, dtype=np.int32)


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
    return np.pad(x, (0, n - len(x)))


def _one_segment(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[L] -> (tokens, segment ids, positions), each padded to [n]."""
    length = len(x)
    return _pad_to(x, n), _pad_to(np.ones(length, np.int32), n), _pad_to(np.arange(length, dtype=np.int32), n)


def _shape(*dims: int):
    import jax

    return jax.ShapeDtypeStruct(dims, np.int32)


def _take(batch: dict, *names: str) -> dict:
    return {k: batch[k] for k in names if k in batch}


def _token_weights(targets):
    import jax.numpy as jnp

    return (targets > 0).astype(jnp.float32)


class _Task:
    """Shared behaviour of the tasks below (no deep inheritance: each overrides what differs)."""

    model_type: ClassVar[str]
    unit: ClassVar[str] = "tokens"  # what the progress line counts per second
    packable: ClassVar[bool] = True
    symbols: ClassVar[tuple[str, ...]] = ()  # extra tokenizer pieces the task needs ([MASK])
    augment_eval: ClassVar[bool] = True  # `augment` applies to eval splits too (BERT masks them)
    uses_tokenizer: ClassVar[bool] = True  # False: records are not text (images); no tokenizer is built
    # Batch entries padded along axis 1 that evaluation may regroup by length and trim (the first
    # gives the length: its non-zero entries); () = fixed shapes (`data.pipeline.length_sorted`).
    trim_keys: ClassVar[tuple[str, ...]] = ()

    def model_class(self):
        from transformer_jax import model

        return {"transformer": model.Transformer, "encoder_classifier": model.EncoderClassifier,
                "masked_lm": model.MaskedLM, "decoder_lm": model.DecoderLM}[self.model_type]

    def make_model(self, cfg):
        """The model this task trains, from a TransformerConfig (the experiment's `build_model`)."""
        return self.model_class()(cfg)

    def with_options(self, **options):
        """The task with model options from the experiment config (`config.vit` for image tasks);
        text tasks take none."""
        if options:
            raise ValueError(f"{', '.join(sorted(options))}: options for image tasks (config.vit); "
                             f"a {self.name} task takes none")
        return self

    def augment(self, tokenizer):
        """A seeded per-example transform (Grain `random_map`) applied after `featurize`, or None."""
        return None

    def final_eval(self, s, params, split: str) -> dict:
        """The end-of-run evaluation on `split`: loss, accuracy (of the labels, or of the masked
        tokens) and perplexity of the targets (train/evaluate.py)."""
        from transformer_jax.train.evaluate import evaluate_split

        return evaluate_split(s, params, split)


@dataclasses.dataclass(frozen=True)
class Translation(_Task):
    """Sequence to sequence (Vaswani et al. 2017): an encoder-decoder `Transformer`; BLEU at the end."""

    source: str = "source"
    target: str = "target"
    name: ClassVar[str] = "translation"
    model_type: ClassVar[str] = "transformer"
    needs: ClassVar[tuple[str, ...]] = ("src", "tgt_in", "tgt_out")  # batch entries the model and loss read

    def featurize(self, record, fz) -> dict | None:
        src = fz.ids(fz.text(record, self.source), fz.max_src_len - 1)
        tgt = None if src is None else fz.ids(fz.text(record, self.target), fz.max_tgt_len - 1)
        if tgt is None:
            return None
        return {"src": _i32(src + [EOS_ID]), "tgt_in": _i32([BOS_ID] + tgt), "tgt_out": _i32(tgt + [EOS_ID])}

    def pad(self, ex, src_len: int, tgt_len: int) -> dict:
        src, src_seg, src_pos = _one_segment(ex["src"], src_len)
        tgt_in, tgt_seg, tgt_pos = _one_segment(ex["tgt_in"], tgt_len)
        return {"src": src, "src_segment_ids": src_seg, "src_positions": src_pos, "tgt_in": tgt_in,
                "tgt_out": _pad_to(ex["tgt_out"], tgt_len), "tgt_segment_ids": tgt_seg, "tgt_positions": tgt_pos}

    def pack_lengths(self, src_len: int, tgt_len: int) -> dict:
        return {"src": src_len, "tgt_in": tgt_len, "tgt_out": tgt_len}

    def unpack_names(self) -> dict:
        """Grain's packer names -> ours."""
        return {"src": "src", "src_segment_ids": "src_segment_ids", "src_positions": "src_positions",
                "tgt_in": "tgt_in", "tgt_out": "tgt_out", "tgt_in_segment_ids": "tgt_segment_ids",
                "tgt_in_positions": "tgt_positions"}

    def model_inputs(self, batch) -> tuple[tuple, dict]:
        return (batch["src"], batch["tgt_in"]), _take(batch, "src_segment_ids", "src_positions",
                                                      "tgt_segment_ids", "tgt_positions")

    def targets_and_weights(self, batch):
        targets = batch["tgt_out"]
        return targets, batch.get("tgt_weights", _token_weights(targets))

    def text_features(self) -> tuple[str, ...]:
        return (self.source, self.target)

    def final_eval(self, s, params, split: str) -> dict:
        """BLEU of beam-search translations of `split` (config.decode settings)."""
        from transformer_jax.train.evaluate import evaluate_bleu

        return evaluate_bleu(s, params, split)

    def batch_shapes(self, batch: int, src_len: int, tgt_len: int) -> dict:
        src = {k: _shape(batch, src_len) for k in ("src", "src_segment_ids", "src_positions")}
        return {**src, **{k: _shape(batch, tgt_len) for k in ("tgt_in", "tgt_out", "tgt_segment_ids", "tgt_positions")}}


@dataclasses.dataclass(frozen=True)
class Classification(_Task):
    """One label per sequence: an `EncoderClassifier`; accuracy at the end. Not packable."""

    text: str = "text"
    label: str = "label"
    name: ClassVar[str] = "classification"
    model_type: ClassVar[str] = "encoder_classifier"
    needs: ClassVar[tuple[str, ...]] = ("inputs", "label")  # batch entries the model and loss read
    unit: ClassVar[str] = "examples"
    packable: ClassVar[bool] = False
    trim_keys: ClassVar[tuple[str, ...]] = ("segment_ids", "inputs", "positions")  # see _Task

    def featurize(self, record, fz) -> dict | None:
        text = fz.text(record, self.text)
        if not text:  # nothing to attend to: drop rather than feed an empty row
            return None
        ids = fz.ids(text, fz.max_src_len)
        return None if ids is None else {"inputs": _i32(ids), "label": np.int32(record[self.label])}

    def pad(self, ex, src_len: int, tgt_len: int) -> dict:
        inputs, seg, pos = _one_segment(ex["inputs"], src_len)
        return {"inputs": inputs, "segment_ids": seg, "positions": pos, "label": ex["label"]}

    def model_inputs(self, batch) -> tuple[tuple, dict]:
        return (batch["inputs"],), _take(batch, "segment_ids", "positions")

    def targets_and_weights(self, batch):
        import jax.numpy as jnp

        # all-padding rows (an eval split's last batch is topped up with them) weigh 0
        real = jnp.any(batch["inputs"] != 0, axis=-1).astype(jnp.float32)
        return batch["label"], batch.get("weights", real)

    def text_features(self) -> tuple[str, ...]:
        return (self.text,)

    def batch_shapes(self, batch: int, src_len: int, tgt_len: int) -> dict:
        return {**{k: _shape(batch, src_len) for k in ("inputs", "segment_ids", "positions")}, "label": _shape(batch)}


@dataclasses.dataclass(frozen=True)
class CausalLM(_Task):
    """Next-token prediction on (packed) text: a `DecoderLM`; perplexity at the end."""

    text: str = "text"
    name: ClassVar[str] = "causal LM"
    model_type: ClassVar[str] = "decoder_lm"
    needs: ClassVar[tuple[str, ...]] = ("inputs", "targets")  # batch entries the model and loss read

    def featurize(self, record, fz) -> dict | None:
        ids = fz.ids(fz.text(record, self.text), fz.max_tgt_len - 1)
        return None if ids is None else {"inputs": _i32([BOS_ID] + ids), "targets": _i32(ids + [EOS_ID])}

    def length(self, src_len: int, tgt_len: int) -> int:
        return tgt_len

    def pad(self, ex, src_len: int, tgt_len: int) -> dict:
        n = self.length(src_len, tgt_len)
        inputs, seg, pos = _one_segment(ex["inputs"], n)
        return {"inputs": inputs, "targets": _pad_to(ex["targets"], n), "segment_ids": seg, "positions": pos}

    def pack_lengths(self, src_len: int, tgt_len: int) -> dict:
        n = self.length(src_len, tgt_len)
        return {"inputs": n, "targets": n}

    def unpack_names(self) -> dict:
        return {"inputs": "inputs", "targets": "targets", "inputs_segment_ids": "segment_ids",
                "inputs_positions": "positions"}

    def model_inputs(self, batch) -> tuple[tuple, dict]:
        return (batch["inputs"],), _take(batch, "segment_ids", "positions")

    def targets_and_weights(self, batch):
        targets = batch["targets"]
        return targets, batch.get("weights", _token_weights(targets))

    def text_features(self) -> tuple[str, ...]:
        return (self.text,)

    def batch_shapes(self, batch: int, src_len: int, tgt_len: int) -> dict:
        n = self.length(src_len, tgt_len)
        return {k: _shape(batch, n) for k in ("inputs", "targets", "segment_ids", "positions")}


@dataclasses.dataclass(frozen=True)
class MaskTokens:
    """BERT's corruption (Devlin et al. 2019, §3.1): select `rate` of the non-special tokens; of
    those 80% become [MASK], 10% a random token, 10% stay; the loss sees only the selected ones.

    A Grain RandomMap: the generator is derived from (seed, example index), so the masks are the
    same on every run and after a resume, and differ from epoch to epoch (RoBERTa's dynamic masking).
    """

    mask_id: int
    vocab_size: int
    rate: float = 0.15
    first_token: int = 4  # ids below are pad, EOS, BOS, UNK: never selected nor drawn

    def random_map(self, ex, rng: np.random.Generator):
        if ex is None:
            return None
        tokens = ex["inputs"]
        candidates = tokens >= self.first_token
        selected = candidates & (rng.random(tokens.shape) < self.rate)
        if candidates.any() and not selected.any():  # at least one target per example
            selected[rng.choice(np.flatnonzero(candidates))] = True
        action = rng.random(tokens.shape)
        random_tokens = rng.integers(self.first_token, self.vocab_size, tokens.shape)
        inputs = np.where(selected & (action < 0.8), self.mask_id, tokens)
        inputs = np.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
        return {"inputs": inputs.astype(np.int32), "targets": np.where(selected, tokens, 0).astype(np.int32)}

    __call__ = random_map


@dataclasses.dataclass(frozen=True)
class MaskedLM(CausalLM):
    """Masked-token prediction (BERT): a `MaskedLM` encoder; masked-token accuracy and perplexity.

    Reads S = `max_src_len` tokens per row (an encoder input); packs like the causal LM.
    """

    text: str = "text"
    mask_rate: float = 0.15
    name: ClassVar[str] = "masked LM"
    model_type: ClassVar[str] = "masked_lm"
    symbols: ClassVar[tuple[str, ...]] = ("[MASK]",)

    def __post_init__(self):
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"MaskedLM.mask_rate={self.mask_rate!r} must be in (0, 1)")

    def featurize(self, record, fz) -> dict | None:
        ids = fz.ids(fz.text(record, self.text), fz.max_src_len - 1)
        return None if ids is None else {"inputs": _i32(ids + [EOS_ID])}

    def length(self, src_len: int, tgt_len: int) -> int:
        return src_len

    def augment(self, tokenizer) -> MaskTokens:
        mask_id = getattr(tokenizer, "mask_id", None)
        if mask_id is None:
            raise ValueError(f"a masked-LM task needs a tokenizer with a [MASK] piece; {type(tokenizer).__name__} "
                             "has none (use config.data.tokenizer='sentencepiece', which adds one)")
        return MaskTokens(mask_id, tokenizer.vocab_size, self.mask_rate)


@dataclasses.dataclass(frozen=True)
class ImageClassification(_Task):
    """One label per image: a `ViT` (transformer_jax/vit.py); accuracy at the end. Not packable.

    Batch: image uint8 [B, H, W, C], label int32 [B], weights float32 [B] (1 per real example; the
    all-zero rows that top up an eval split's last batch weigh 0, as a black image could not tell
    them apart). Pixels travel as uint8 (a quarter of float32's bytes) and become float in
    `model_inputs` (/ 255). The geometry (`image_size`, `num_channels`) is the dataset's; the
    `patch_size` is the ViT's, overridable by `config.vit.patch_size`. `shift`: training images are
    shifted by up to that many pixels (`data.images.RandomShift`, seeded); eval images never.
    """

    image: str = "image"
    label: str = "label"
    image_size: tuple[int, int] = (28, 28)
    num_channels: int = 1
    patch_size: int | tuple[int, int] = 4
    shift: int = 0
    name: ClassVar[str] = "image classification"
    model_type: ClassVar[str] = "vit"
    needs: ClassVar[tuple[str, ...]] = ("image", "label")
    unit: ClassVar[str] = "examples"
    packable: ClassVar[bool] = False
    augment_eval: ClassVar[bool] = False
    uses_tokenizer: ClassVar[bool] = False

    def __post_init__(self):
        self.vit_config()  # the geometry's named errors, at construction
        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or self.shift < 0:
            raise ValueError(f"ImageClassification.shift must be an int >= 0 (pixels); got {self.shift!r}")
        if self.shift >= min(self.image_size):  # a shift past the edge leaves nothing of the image
            raise ValueError(f"ImageClassification.shift={self.shift} must be smaller than the "
                             f"{self.image_size[0]}x{self.image_size[1]} image (pixels)")

    def vit_config(self):
        from transformer_jax.vit import ViTConfig

        return ViTConfig(self.image_size, self.patch_size, self.num_channels)

    def model_class(self):
        from transformer_jax.vit import ViT

        return ViT

    def make_model(self, cfg):
        return self.model_class()(cfg, self.vit_config())

    def with_options(self, **options):
        valid = ("patch_size", "shift")
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"config.vit.{unknown[0]} is not an image-task option; valid: {', '.join(valid)}")
        try:
            return dataclasses.replace(self, **options)
        except ValueError as err:
            raise ValueError(f"config.vit: {err}") from None

    def augment(self, tokenizer):
        from transformer_jax.data.images import RandomShift

        return RandomShift(self.shift, self.image) if self.shift else None

    def featurize(self, record, fz) -> dict | None:
        image = np.asarray(record[self.image])
        want = (*self.vit_config().image_size, self.num_channels)
        if image.shape != want or image.dtype != np.uint8:
            raise ValueError(f"feature {self.image!r} holds a {image.dtype} image of shape {image.shape}; this "
                             f"task expects uint8 {want} (image_size, num_channels)")
        return {"image": image, "label": np.int32(record[self.label]), "weights": np.float32(1.0)}

    def pad(self, ex, src_len: int, tgt_len: int) -> dict:
        return ex  # fixed shape already

    def model_inputs(self, batch) -> tuple[tuple, dict]:
        import jax.numpy as jnp

        return (batch["image"].astype(jnp.float32) / 255.0,), {}

    def targets_and_weights(self, batch):
        import jax.numpy as jnp

        return batch["label"], batch.get("weights", jnp.ones(batch["label"].shape, jnp.float32))

    def text_features(self) -> tuple[str, ...]:
        return ()

    def batch_shapes(self, batch: int, src_len: int, tgt_len: int) -> dict:
        import jax

        h, w = self.vit_config().image_size
        return {"image": jax.ShapeDtypeStruct((batch, h, w, self.num_channels), np.uint8), "label": _shape(batch),
                "weights": jax.ShapeDtypeStruct((batch,), np.float32)}


Task = Union[Translation, Classification, CausalLM, MaskedLM, ImageClassification]
TASKS = (Translation, Classification, CausalLM, MaskedLM, ImageClassification)
TASK_OF_MODEL = {cls.model_type: cls for cls in TASKS}

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


def base_name(dataset: str) -> str:
    """'tjax_listops/small:1.0.0' -> 'tjax_listops'."""
    return dataset.split("/")[0].split(":")[0]


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
        f"config.data.task={dataset!r} is not a known dataset; pass config.data.text_keys, e.g. ('de', 'en') "
        f"for translation, ('text', 'label') for classification or ('text',) for a language model. "
        f"Known: {', '.join(sorted(REGISTRY))}, wmt*_translate/xx-yy")


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
    kind = task.name
    fits = [task.model_type] + ([t for t in ("decoder_lm", "masked_lm") if t != task.model_type]
                                if isinstance(task, CausalLM) else []) + list(also)
    raise ValueError(f"config.model_type={model_type!r} does not fit config.data.task={dataset!r} (a {kind} task); "
                     f"valid for it: {', '.join(fits)}")


def synthetic(model_type: str = "") -> Task:
    """The task of the synthetic in-memory batches (tests, benchmarks): given by the model type."""
    model_type = model_type or "transformer"
    if model_type not in TASK_OF_MODEL:
        raise ValueError(f"config.model_type={model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    return TASK_OF_MODEL[model_type]()
