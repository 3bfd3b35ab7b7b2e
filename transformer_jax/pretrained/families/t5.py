"""T5 (Raffel et al. 2020): pre-RMSNorm encoder-decoder with bucketed relative position biases.

T5 does not scale attention scores (`attention_scale=1.0`) and, with tied embeddings, scales the
decoder output by d_model^-0.5 before the head (`logits_scale`).
"""

from __future__ import annotations

import numpy as np

from transformer_jax.config import TransformerConfig
from transformer_jax.pretrained.families.base import Family, attn_rows, norm_rows, require
from transformer_jax.pretrained.tensors import Tensor, copy, linear


# T5's "gated-gelu" uses gelu_new, the tanh approximation (v1.1, Flan-T5).
T5_FEED_FORWARD = {"relu": "relu", "gated-gelu": "geglu_tanh", "gated-silu": "swiglu"}


def to_config(hf: dict) -> TransformerConfig:
    proj = require(hf, "feed_forward_proj", tuple(T5_FEED_FORWARD), "relu")
    tied = hf.get("tie_word_embeddings", True)
    # transformers >= 5 writes `scale_decoder_outputs` and forces tie_word_embeddings=true even for
    # v1.1 (untied, unscaled); older configs imply the scaling by tie_word_embeddings alone.
    scaled = hf.get("scale_decoder_outputs", tied)
    d = hf["d_model"]
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=d, num_heads=hf["num_heads"], head_dim=hf["d_kv"],
        d_ff=hf["d_ff"], num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        dropout_rate=hf.get("dropout_rate", 0.1), activation=T5_FEED_FORWARD[proj], norm="rmsnorm",
        norm_position="pre", position="relative", relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        max_len=hf.get("n_positions", 512), norm_eps=hf.get("layer_norm_epsilon", 1e-6), use_bias=False,
        attention_scale=1.0, embed_scale=False, share_embeddings=True, tie_output=tied,
        logits_scale=d ** -0.5 if scaled else 1.0, pad_id=hf.get("pad_token_id", 0))


def to_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="t5", vocab_size=cfg.vocab_size, d_model=cfg.d_model, num_heads=cfg.num_heads,
                d_kv=cfg.resolved_head_dim, d_ff=cfg.d_ff, num_layers=cfg.num_encoder_layers,
                num_decoder_layers=cfg.num_decoder_layers, dropout_rate=cfg.dropout_rate,
                feed_forward_proj={v: k for k, v in T5_FEED_FORWARD.items()}.get(cfg.activation, cfg.activation),
                relative_attention_num_buckets=cfg.relative_buckets,
                relative_attention_max_distance=cfg.relative_max_distance, n_positions=cfg.max_len,
                layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_output,
                scale_decoder_outputs=cfg.logits_scale != 1.0, pad_token_id=cfg.pad_id,
                decoder_start_token_id=cfg.pad_id, eos_token_id=1, is_encoder_decoder=True)


def tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    gated = cfg.activation != "relu"
    rows = [copy("shared.weight", ("shared_embedding", "embedding"),
                 aliases=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")),
            copy("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 ("encoder", "relative_bias", "embedding")),
            copy("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 ("decoder", "relative_bias", "embedding")),
            *norm_rows("encoder.final_layer_norm", ("encoder", "final_norm"), bias=False),
            *norm_rows("decoder.final_layer_norm", ("decoder", "final_norm"), bias=False)]

    def mlp(prefix, ours):
        wi = ([linear(f"{prefix}.wi_0.weight", ours + ("wi", "kernel")),
               linear(f"{prefix}.wi_1.weight", ours + ("wi_gate", "kernel"))] if gated
              else [linear(f"{prefix}.wi.weight", ours + ("wi", "kernel"))])
        return wi + [linear(f"{prefix}.wo.weight", ours + ("wo", "kernel"))]

    for stack, layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        for i in range(layers):
            block, ours = f"{stack}.block.{i}.layer", (stack, f"layer_{i}")
            rows += norm_rows(f"{block}.0.layer_norm", ours + ("attention_block", "norm"), bias=False)
            rows += attn_rows(f"{block}.0.SelfAttention", ours + ("self_attention",), cfg, bias=False)
            ff = 1
            if stack == "decoder":
                rows += norm_rows(f"{block}.1.layer_norm", ours + ("cross_block", "norm"), bias=False)
                rows += attn_rows(f"{block}.1.EncDecAttention", ours + ("cross_attention",), cfg,
                              bias=False)
                ff = 2
            rows += norm_rows(f"{block}.{ff}.layer_norm", ours + ("mlp_block", "norm"), bias=False)
            rows += mlp(f"{block}.{ff}.DenseReluDense", ours + ("mlp",))
    if not cfg.tie_output:
        rows.append(linear("lm_head.weight", ("decoder", "logits", "kernel")))
    return rows


def resolve(hf: dict, reader) -> dict:
    """A stored `lm_head.weight` unlike `shared.weight` is the model's own head (the reference
    unties it on loading whatever `tie_word_embeddings` says; transformers 5 always writes true)."""
    names = reader.names()
    written_by_5 = "scale_decoder_outputs" in hf  # older releases tie whenever the config says so
    if written_by_5 and hf.get("tie_word_embeddings", True) and {"lm_head.weight", "shared.weight"} <= names:
        if not np.array_equal(reader.read("lm_head.weight"), reader.read("shared.weight")):
            return dict(hf, tie_word_embeddings=False)
    return hf


FAMILY = Family("t5", {"T5ForConditionalGeneration": "seq2seq"}, to_config, to_hf, tensors,
                ignored=(r"lm_head\.weight",), resolve=resolve)
