"""Image datasets: the built-in ``tjax_digits`` (scikit-learn's 8x8 handwritten digits, no download)
and what the image tasks need of tfds's ``mnist`` / ``cifar10`` once they are prepared.

``tjax_digits``: the 1,797 8x8 grey images of `sklearn.datasets.load_digits` (the UCI "Optical
Recognition of Handwritten Digits" test set, which ships inside scikit-learn), prepared locally as
tfds ArrayRecord files on first use like the other built-in datasets. Pixels are 0..16 there; they
are stored as uint8 ``round(v * 255 / 16)`` (one-to-one, so nothing is lost) in an ``image``
feature [8, 8, 1], so every image dataset reaches the model the same way (uint8 / 255). The split
is fixed: `train_test_split(test_size=360, stratify=labels, random_state=0)` -> 1,437 train / 360
test, each class in the same proportion in both. There is no separate validation split; a run
that evaluates during training evaluates on ``test`` (configs/vit_digits.py keeps no "best"
checkpoint chosen by it).

mnist [28, 28, 1] and cifar10 [32, 32, 3] are tfds's own builders (features ``image``, ``label``):
prepare them once, on a machine with network access (`tfds build mnist --file_format=array_record`);
`open_source` then reads them without TensorFlow, and names the command when they are missing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from transformer_jax.data.local_builder import LocalBuilder

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images uint8 [1437, 8, 8, 1], labels int64 [1437]), 'test': (... [360] ...)}."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [1797 8 8 1]
    labels = digits.target
    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=DIGITS_TEST_SIZE, stratify=labels,
                                   random_state=DIGITS_SPLIT_SEED)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


class TjaxDigits(LocalBuilder):
    """tfds builder of scikit-learn's 8x8 digits; prepared locally, no download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: sklearn load_digits, stratified 1437/360 split, seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                # a raw tensor: tfds's Image feature would PNG-encode through TensorFlow
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10)}),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {name: self._generate_examples(*arrays) for name, arrays in digits_splits().items()}

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}


@dataclasses.dataclass(frozen=True)
class RandomShift:
    """Light, seeded augmentation for small images: shift by up to `max_shift` pixels in each
    direction (zero fill), as the translations of LeCun et al. 1998 / Simard et al. 2003.

    A Grain RandomMap: the generator comes from (seed, example index), so the shifts are the same
    after a resume and differ from epoch to epoch. Training batches only (the image task applies it
    when the iterator repeats).
    """

    max_shift: int = 1
    key: str = "image"

    def random_map(self, ex, rng: np.random.Generator):
        if ex is None or self.max_shift == 0:
            return ex
        image = ex[self.key]  # [H W C]
        dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
        h, w = image.shape[:2]
        out = np.zeros_like(image)
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return {**ex, self.key: out}

    __call__ = random_map
