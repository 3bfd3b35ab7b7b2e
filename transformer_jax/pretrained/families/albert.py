"""ALBERT (Lan et al. 2020): BERT with factorised embeddings (width `embedding_size`, projected up
to the hidden size: `embed_dim`) and one layer whose parameters every layer reuses
(`share_layers`: held once, as in the checkpoint). Only one layer group of one layer is supported
(`num_hidden_groups=1`, `inner_group_num=1`, as every published ALBERT)."""

from __future__ import annotations

from transformer_jax.config import TransformerConfig
from transformer_jax.model import Encoder
from transformer_jax.pretrained.families.base import (Family, activation, attn_rows, encoder_head_rows,
                                                      encoder_paths, linear_rows, norm_rows, num_labels,
                                                      our_activation, require)
from transformer_jax.pretrained.tensors import Tensor, copy

ARCHITECTURES = {"AlbertModel": "encoder", "AlbertForMaskedLM": "masked_lm",
                 "AlbertForSequenceClassification": "sequence_classification",
                 "AlbertForTokenClassification": "token_classification",
                 "AlbertForQuestionAnswering": "question_answering"}


def to_config(hf: dict) -> TransformerConfig:
    require(hf, "num_hidden_groups", (1,), 1)
    require(hf, "inner_group_num", (1,), 1)
    require(hf, "position_embedding_type", ("absolute",), "absolute")
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], num_encoder_layers=hf["num_hidden_layers"], num_decoder_layers=0,
        dropout_rate=hf.get("hidden_dropout_prob", 0.0), activation=activation(hf, "hidden_act", "gelu_new"),
        norm="layernorm", norm_position="post", position="learned", max_len=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2), norm_eps=hf.get("layer_norm_eps", 1e-12),
        pad_id=hf.get("pad_token_id", 0), embed_scale=False, embed_norm=True, logits_bias=True,
        tie_output=True, num_classes=num_labels(hf), pooling="cls",
        embed_dim=hf.get("embedding_size", 128), share_layers=True)


def to_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="albert", vocab_size=cfg.vocab_size, embedding_size=cfg.resolved_embed_dim,
                hidden_size=cfg.d_model, num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff,
                num_hidden_layers=cfg.num_encoder_layers, num_hidden_groups=1, inner_group_num=1,
                hidden_dropout_prob=cfg.dropout_rate, hidden_act=our_activation(cfg),
                max_position_embeddings=cfg.max_len, type_vocab_size=cfg.type_vocab_size,
                layer_norm_eps=cfg.norm_eps, pad_token_id=cfg.pad_id, position_embedding_type="absolute",
                num_labels=cfg.num_classes, tie_word_embeddings=True)


def tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    head = ARCHITECTURES[arch]
    enc, emb = encoder_paths(head)
    p = "" if head == "encoder" else "albert."
    rows = [copy(f"{p}embeddings.word_embeddings.weight", emb + ("embedding",)),
            copy(f"{p}embeddings.position_embeddings.weight", enc + ("embedder", "positions", "pos_embedding")),
            copy(f"{p}embeddings.token_type_embeddings.weight", enc + ("embedder", "token_types", "embedding")),
            *norm_rows(f"{p}embeddings.LayerNorm", enc + ("embedder", "norm")),
            *linear_rows(f"{p}encoder.embedding_hidden_mapping_in", enc + ("embedder", "projection"))]
    layer, ours = f"{p}encoder.albert_layer_groups.0.albert_layers.0", enc + ("shared_layer",)
    rows += attn_rows(f"{layer}.attention", ours + ("self_attention",), cfg, ("query", "key", "value", "dense"))
    rows += norm_rows(f"{layer}.attention.LayerNorm", ours + ("attention_block", "norm"))
    rows += linear_rows(f"{layer}.ffn", ours + ("mlp", "wi"))
    rows += linear_rows(f"{layer}.ffn_output", ours + ("mlp", "wo"))
    rows += norm_rows(f"{layer}.full_layer_layer_norm", ours + ("mlp_block", "norm"))
    if head == "masked_lm":
        return rows + [*linear_rows("predictions.dense", ("transform",)),
                       *norm_rows("predictions.LayerNorm", ("transform_norm",)),
                       copy("predictions.bias", ("logits_bias",), aliases=("predictions.decoder.bias",))]
    return rows + encoder_head_rows(head, pooler="pooler" if head == "encoder" else "albert.pooler",
                                    classifier="classifier")


FAMILY = Family("albert", ARCHITECTURES, to_config, to_hf, tensors,
                ignored=(r"predictions\.decoder\.weight", r".*position_ids"),
                unused=(r"sop_classifier\..*",), base_prefix="albert",
                build={"encoder": lambda cfg: Encoder(cfg, pooler=True)})
