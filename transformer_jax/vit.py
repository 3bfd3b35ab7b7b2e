"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), built from the
library's encoder blocks.

    images [B, H, W, C] float -> patches [B, P, p*p*C] -> linear [B, P, D] (+ CLS) + positions
      -> EncoderBlock x L (cfg.encoder_attention: Dense, Flash, Windowed, BlockSparse) -> final norm
      -> CLS token or mean over patches [B, D] -> linear head [B, num_classes] (float32)

Patch embedding is the reshape + Dense form: each non-overlapping p x p patch, flattened in
(row, column, channel) order, is multiplied by one [p*p*C, D] matrix. That is exactly a Conv with
kernel = stride = p (kernel [p, p, C, D] reshaped to [p*p*C, D]); the reshape keeps the kernel a
plain logically partitioned matrix. Patches are read in raster order (row by row), so a 1-D
window over the sequence sees the horizontal neighbours and the rows just above and below.

The image geometry lives in a small `ViTConfig` beside the `TransformerConfig` (which keeps the
width, depth, heads, norms, dropout and attention specs): text models never carry image fields,
and the geometry is validated once, where it is defined. Alphabet: B batch, H/W image height and
width, C channels, P patches, D model dim, K classes.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.config import TransformerConfig
from transformer_jax.layers import Dropout, dense, partitioned, sinusoidal
from transformer_jax.model import EncoderBlock, _final_norm, _relative_bias
from transformer_jax.scan import apply_layers, encoder_kinds


def _pair(value, field: str) -> tuple[int, int]:
    """An int or an (h, w) pair of positive ints -> (h, w); a named error otherwise."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"ViTConfig.{field} must be a positive int or a (height, width) pair of them; got {value!r}")
    return int(pair[0]), int(pair[1])


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Image geometry of a ViT: image (height, width), patch (height, width), channels.

    An int means a square. The patch must tile the image exactly (ViT drops no pixels).
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    num_channels: int = 3

    def __post_init__(self):
        image, patch = _pair(self.image_size, "image_size"), _pair(self.patch_size, "patch_size")
        object.__setattr__(self, "image_size", image)
        object.__setattr__(self, "patch_size", patch)
        for axis, (i, p) in enumerate(zip(image, patch)):
            if i % p:
                raise ValueError(f"ViTConfig.image_size={image} is not a multiple of ViTConfig.patch_size={patch} "
                                 f"({'height' if axis == 0 else 'width'} {i} % {p} = {i % p}); pick a patch "
                                 f"size that divides the image, e.g. one of {_divisors(i)}")
        c = self.num_channels
        if not isinstance(c, numbers.Integral) or isinstance(c, bool) or c <= 0:
            raise ValueError(f"ViTConfig.num_channels must be a positive int; got {c!r}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch: p_h * p_w * C."""
        return self.patch_size[0] * self.patch_size[1] * self.num_channels

    def check_images(self, images) -> None:
        """A named error unless `images` is a float [B, H, W, C] batch of this geometry."""
        shape = tuple(np.shape(images))
        want = (*self.image_size, self.num_channels)
        if len(shape) != 4:
            raise ValueError(f"ViT expects images [batch, height, width, channels] = [B, {want[0]}, {want[1]}, "
                             f"{want[2]}]; got an array of shape {shape}")
        if shape[1:3] != self.image_size:
            raise ValueError(f"images are {shape[1]}x{shape[2]}, but ViTConfig.image_size={self.image_size}")
        if shape[3] != self.num_channels:
            raise ValueError(f"images have {shape[3]} channels, but ViTConfig.num_channels={self.num_channels} "
                             f"(images [B, H, W, C], channels last)")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"ViT expects float pixels (e.g. uint8 / 255); got dtype {images.dtype}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def patchify(images: Array, patch_size: tuple[int, int]) -> Array:
    """[B, H, W, C] -> [B, P, p_h * p_w * C]: non-overlapping patches in raster order, each
    flattened in (row, column, channel) order (the order of a Conv kernel [p_h, p_w, C, D])."""
    b, h, w, c = images.shape
    ph, pw = patch_size
    x = images.reshape(b, h // ph, ph, w // pw, pw, c)  # [B gh ph gw pw C]
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B gh gw ph pw C]
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def _encode(module: nn.Module, cfg: TransformerConfig, vit: ViTConfig, images: Array, deterministic: bool) -> Array:
    """The ViT backbone, its parameters created in `module`'s scope: images [B, H, W, C] ->
    final hidden states [B, n, D] (n = P, + 1 with a CLS token)."""
    vit.check_images(images)
    dt = cfg.compute_dtype
    patches = patchify(images.astype(dt), vit.patch_size)  # [B P p*p*C]
    x = dense(cfg.d_model, (None, "embed"), dt, cfg.params_dtype, "patch_embedding")(patches)  # [B P D]
    if cfg.pooling == "cls":
        cls = module.param("cls", partitioned(nn.initializers.zeros_init(), None, None, "embed"),
                           (1, 1, cfg.d_model), cfg.params_dtype)
        x = jnp.concatenate([jnp.broadcast_to(jnp.asarray(cls, dt), (x.shape[0], 1, cfg.d_model)), x], axis=1)
    b, n = x.shape[:2]  # n = P (+1 with CLS)
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    if cfg.position == "learned":
        table = module.param("pos_embedding", partitioned(nn.initializers.normal(0.02), None, "embed"),
                             (n, cfg.d_model), cfg.params_dtype)
        x = x + jnp.asarray(table, dt)[None]
    elif cfg.position in ("sinusoidal", "sinusoidal_paper"):
        x = x + sinusoidal(positions, cfg.d_model, dt, cfg.position == "sinusoidal_paper")
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    bias = _relative_bias(cfg, True)(positions, positions) if cfg.position == "relative" else None
    # the Encoder's layers (scan_layers, remat, MoE included); no padding: every patch is real.
    # EncoderBlock(x, segment_ids, positions, deterministic, bias): deterministic (4) is static
    x = apply_layers(cfg, EncoderBlock, encoder_kinds(cfg), (4,), x, None, positions, deterministic, bias)
    return _final_norm(cfg, x)  # [B n D]


def _channels_last(pixel_values: Array) -> Array:
    """The reference's pixel_values [B, C, H, W] -> our images [B, H, W, C]."""
    if np.ndim(pixel_values) != 4:
        raise ValueError(f"pixel_values must be [batch, channels, height, width]; got shape {np.shape(pixel_values)}")
    return jnp.transpose(jnp.asarray(pixel_values), (0, 2, 3, 1))


class ViT(nn.Module):
    """Image classifier: `ViT(cfg, vit)(images [B, H, W, C] float) -> logits [B, cfg.num_classes]`.

    From `cfg` (a TransformerConfig): d_model, heads, d_ff, num_encoder_layers, encoder_attention,
    norm / norm_position (ViT is pre-LN), activation, dropout, dtypes, num_classes, `pooling`
    ("cls": a learned CLS token in front, read at the end, as in the paper; "mean": the mean over
    patches, no CLS token) and `position` ("learned", the paper's, is a [P(+1), D] table; the 1-D
    "sinusoidal", "rotary", "relative" and "none" also work; vocab_size, pad_id and max_len are unused).
    The encoder layers run as the text `Encoder`'s do, so `scan_layers`, `remat` and mixture-of-experts
    feed-forwards (`num_experts`) apply here too.

    With a local pattern (`Windowed`) prefer pooling="mean": the CLS token sits at position 0 and
    would see only its window. `BlockSparse` makes its first blocks global, so a CLS token there
    reads every patch.
    """

    cfg: TransformerConfig
    vit: ViTConfig
    head_name: ClassVar[str] = "image_classification"  # its head among the pretrained heads

    @nn.compact
    def __call__(self, images: Array, *, deterministic: bool = True) -> Array:
        cfg = self.cfg
        x = _encode(self, cfg, self.vit, images, deterministic)  # [B n D]
        pooled = x[:, 0] if cfg.pooling == "cls" else jnp.mean(x, axis=1)  # [B D]
        logits = dense(cfg.num_classes, ("embed", "classes"), cfg.compute_dtype, cfg.params_dtype, "head")(pooled)
        return logits.astype(jnp.float32)  # [B K]

    def forward(self, pixel_values: Array, *, deterministic: bool = True) -> dict:
        """The reference's call (`ViTForImageClassification`): pixel_values [B, C, H, W] -> {"logits" [B, K]}."""
        return {"logits": self(_channels_last(pixel_values), deterministic=deterministic)}

    def example_inputs(self) -> tuple:
        return (jnp.zeros((1, *self.vit.image_size, self.vit.num_channels), jnp.float32),)


class ViTEncoder(nn.Module):
    """The ViT without its classifier (`ViTModel`): images [B, H, W, C] -> final hidden states
    [B, n, D] (the CLS token first with pooling="cls"); its parameters are `ViT`'s but `head`.

    With `pooler`, also the pooled CLS token tanh(dense(x[:, 0])) [B, D] (the reference's
    `ViTModel` pooler): `__call__` returns (hidden states, pooled).
    """

    cfg: TransformerConfig
    vit: ViTConfig
    pooler: bool = False
    head_name: ClassVar[str] = "encoder"

    @nn.compact
    def __call__(self, images: Array, *, deterministic: bool = True):
        cfg = self.cfg
        x = _encode(self, cfg, self.vit, images, deterministic)  # [B n D]
        if not self.pooler:
            return x
        pooled = dense(cfg.d_model, ("embed", "mlp"), cfg.compute_dtype, cfg.params_dtype, "pooler")(x[:, 0])
        return x, jnp.tanh(pooled)  # [B n D], [B D]

    def forward(self, pixel_values: Array, *, deterministic: bool = True) -> dict:
        """The reference's call (`ViTModel`): pixel_values [B, C, H, W] -> {"last_hidden_state"
        [B, n, D], and "pooler_output" [B, D] with `pooler`}."""
        out = self(_channels_last(pixel_values), deterministic=deterministic)
        if not self.pooler:
            return {"last_hidden_state": out}
        return {"last_hidden_state": out[0], "pooler_output": out[1]}

    def example_inputs(self) -> tuple:
        return (jnp.zeros((1, *self.vit.image_size, self.vit.num_channels), jnp.float32),)
