"""ViT (Dosovitskiy et al. 2021): `ViTModel` (with its tanh pooler) and `ViTForImageClassification`,
loaded into `tj.ViTEncoder(cfg, vit, pooler=True)` and `tj.ViT(cfg, vit)`.

A pre-LN encoder over a CLS token and the image's patches, learned positions, a final LayerNorm;
the classifier reads the CLS token. The image geometry (image_size, patch_size, num_channels)
is not a `TransformerConfig` field: it lives in the model's `ViTConfig`, which is built from the
config.json fields kept in `cfg.hf_config` and written back from the model (`model_fields`).

Layouts: the reference's patch embedding is a Conv2d weight [D, C, p_h, p_w] over channels-first
pixels; ours is the same convolution as a Dense kernel [p_h * p_w * C, D] over patches flattened
in (row, column, channel) order. Its position table is [1, n, D]; ours [n, D].
"""

from __future__ import annotations

import json

from transformer_jax.config import TransformerConfig
from transformer_jax.pretrained.families.base import (Family, activation, attn_rows, linear_rows, norm_rows,
                                                      num_labels, our_activation, require, unsupported)
from transformer_jax.pretrained.tensors import Tensor, copy
from transformer_jax.vit import ViT, ViTConfig, ViTEncoder

ARCHITECTURES = {"ViTModel": "encoder", "ViTForImageClassification": "image_classification"}
GEOMETRY = ("image_size", "patch_size", "num_channels")


def geometry(cfg: TransformerConfig) -> ViTConfig:
    """The image geometry kept from config.json (`cfg.hf_config`); the reference's defaults
    (224, 16, 3) where a field is absent, as the reference reads such a config."""
    kept = {k: json.loads(v) for k, v in cfg.hf_config if k in GEOMETRY}
    return ViTConfig(**kept)


def _geometry_hf(vit: ViTConfig) -> dict:
    """Our ViTConfig -> config.json fields (an int for a square, as the reference writes them)."""
    square = lambda pair: pair[0] if pair[0] == pair[1] else list(pair)  # noqa: E731
    return dict(image_size=square(vit.image_size), patch_size=square(vit.patch_size), num_channels=vit.num_channels)


def to_config(hf: dict) -> TransformerConfig:
    require(hf, "qkv_bias", (True,), True)
    require(hf, "pooler_act", ("tanh",), "tanh")
    d = hf.get("hidden_size", 768)
    if hf.get("pooler_output_size", d) != d:
        raise unsupported("pooler_output_size", hf["pooler_output_size"], f"it must equal hidden_size={d}")
    vit = ViTConfig(**{k: hf[k] for k in GEOMETRY if k in hf})
    return TransformerConfig(
        vocab_size=1, d_model=d, num_heads=hf.get("num_attention_heads", 12), d_ff=hf.get("intermediate_size", 3072),
        num_encoder_layers=hf.get("num_hidden_layers", 12), num_decoder_layers=0,
        dropout_rate=hf.get("hidden_dropout_prob", 0.0), activation=activation(hf, "hidden_act"),
        norm="layernorm", norm_position="pre", position="learned", max_len=vit.num_patches + 1,
        norm_eps=hf.get("layer_norm_eps", 1e-12), use_bias=True, pad_id=None, embed_scale=False,
        tie_output=False, num_classes=num_labels(hf), pooling="cls")


def to_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="vit", hidden_size=cfg.d_model, num_hidden_layers=cfg.num_encoder_layers,
                num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff, hidden_act=our_activation(cfg),
                hidden_dropout_prob=cfg.dropout_rate, attention_probs_dropout_prob=0.0,
                layer_norm_eps=cfg.norm_eps, qkv_bias=True, pooler_act="tanh", pooler_output_size=cfg.d_model,
                num_labels=cfg.num_classes)


def _patch_embedding(name: str, path: tuple, vit: ViTConfig) -> Tensor:
    """Conv2d weight [D, C, p_h, p_w] <-> Dense kernel [p_h * p_w * C, D]."""
    (ph, pw), c = vit.patch_size, vit.num_channels
    return Tensor(name, (path,), lambda w: (w.transpose(2, 3, 1, 0).reshape(ph * pw * c, w.shape[0]),),
                  lambda k: k.reshape(ph, pw, c, k.shape[-1]).transpose(3, 2, 0, 1))


def tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    p = "" if arch == "ViTModel" else "vit."
    rows = [copy(f"{p}embeddings.cls_token", ("cls",)),
            Tensor(f"{p}embeddings.position_embeddings", (("pos_embedding",),), lambda w: (w[0],), lambda t: t[None]),
            _patch_embedding(f"{p}embeddings.patch_embeddings.projection.weight", ("patch_embedding", "kernel"),
                             geometry(cfg)),
            copy(f"{p}embeddings.patch_embeddings.projection.bias", ("patch_embedding", "bias")),
            *norm_rows(f"{p}layernorm", ("final_norm",))]
    for i in range(cfg.num_encoder_layers):
        layer, ours = f"{p}encoder.layer.{i}", (f"layer_{i}",)
        rows += attn_rows(f"{layer}.attention", ours + ("self_attention",), cfg,
                          ("attention.query", "attention.key", "attention.value", "output.dense"))
        rows += norm_rows(f"{layer}.layernorm_before", ours + ("attention_block", "norm"))
        rows += linear_rows(f"{layer}.intermediate.dense", ours + ("mlp", "wi"))
        rows += linear_rows(f"{layer}.output.dense", ours + ("mlp", "wo"))
        rows += norm_rows(f"{layer}.layernorm_after", ours + ("mlp_block", "norm"))
    if arch == "ViTModel":
        return rows + linear_rows("pooler.dense", ("pooler",))
    return rows + linear_rows("classifier", ("head",))


FAMILY = Family("vit", ARCHITECTURES, to_config, to_hf, tensors,
                ignored=(r"(vit\.)?embeddings\.mask_token",), base_prefix="vit",
                build={"encoder": lambda cfg: ViTEncoder(cfg, geometry(cfg), pooler=True),
                       "image_classification": lambda cfg: ViT(cfg, geometry(cfg))},
                model_fields=lambda model: _geometry_hf(model.vit))
