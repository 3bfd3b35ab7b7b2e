"""Image classification: one label per image, a `ViT` (transformer_jax/vit.py). Not packable.

Batch: image uint8 [B, H, W, C]; label int32 [B]; weights float32 [B] (1 per real example; the
all-zero rows that top up an eval split's last batch weigh 0, as a black image could not tell them
apart). Pixels travel as uint8 (a quarter of float32's bytes) and become float in `model_inputs`
(/ 255).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from transformer_jax.data.images import RandomShift
from transformer_jax.tasks.base import Field, Task
from transformer_jax.vit import ViT, ViTConfig


@dataclasses.dataclass(frozen=True)
class ImageClassification(Task):
    """The geometry (`image_size`, `num_channels`) is the dataset's; the `patch_size` is the ViT's,
    overridable by `config.vit.patch_size`. `shift`: training images are shifted by up to that many
    pixels (`data.images.RandomShift`, seeded); eval images never."""

    image: str = "image"
    label: str = "label"
    image_size: tuple[int, int] = (28, 28)
    num_channels: int = 1
    patch_size: int | tuple[int, int] = 4
    shift: int = 0
    name: ClassVar[str] = "image classification"
    model_type: ClassVar[str] = "vit"
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

    @property
    def fields(self) -> tuple[Field, ...]:
        shape = (*self.vit_config().image_size, self.num_channels)
        return (Field("image", shape, np.uint8), Field("label", None, role="target"),
                Field("weights", None, np.float32, role="target"))

    def vit_config(self) -> ViTConfig:
        return ViTConfig(self.image_size, self.patch_size, self.num_channels)

    def model_class(self):
        return ViT

    def make_model(self, cfg):
        return ViT(cfg, self.vit_config())

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
        return RandomShift(self.shift, self.image) if self.shift else None

    def featurize(self, record, fz) -> dict | None:
        image = np.asarray(record[self.image])
        want = (*self.vit_config().image_size, self.num_channels)
        if image.shape != want or image.dtype != np.uint8:
            raise ValueError(f"feature {self.image!r} holds a {image.dtype} image of shape {image.shape}; this "
                             f"task expects uint8 {want} (image_size, num_channels)")
        return {"image": image, "label": np.int32(record[self.label]), "weights": np.float32(1.0)}

    def model_inputs(self, batch) -> tuple[tuple, dict]:
        import jax.numpy as jnp

        return (batch["image"].astype(jnp.float32) / 255.0,), {}

    def targets_and_weights(self, batch):
        import jax.numpy as jnp

        return batch["label"], batch.get("weights", jnp.ones(batch["label"].shape, jnp.float32))

    def text_features(self) -> tuple[str, ...]:
        return ()
