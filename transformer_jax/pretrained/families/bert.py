"""BERT (Devlin et al. 2019): post-LN encoder, learned positions, token types, tanh pooler.

Heads: BertModel (with its pooler), BertForMaskedLM, BertForSequenceClassification,
BertForTokenClassification, BertForQuestionAnswering.
"""

from __future__ import annotations

from transformer_jax.config import TransformerConfig
from transformer_jax.model import Encoder
from transformer_jax.pretrained.families.base import (Family, activation, attn_rows, encoder_head_rows,
                                                      encoder_paths, linear_rows, norm_rows, num_labels,
                                                      our_activation, require)
from transformer_jax.pretrained.tensors import Tensor, copy

ARCHITECTURES = {"BertModel": "encoder", "BertForMaskedLM": "masked_lm",
                 "BertForSequenceClassification": "sequence_classification",
                 "BertForTokenClassification": "token_classification",
                 "BertForQuestionAnswering": "question_answering"}


def to_config(hf: dict) -> TransformerConfig:
    require(hf, "position_embedding_type", ("absolute",), "absolute")
    require(hf, "is_decoder", (False,), False)
    require(hf, "add_cross_attention", (False,), False)
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], num_encoder_layers=hf["num_hidden_layers"], num_decoder_layers=0,
        dropout_rate=hf.get("hidden_dropout_prob", 0.1), activation=activation(hf, "hidden_act"),
        norm="layernorm", norm_position="post", position="learned", max_len=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2), norm_eps=hf.get("layer_norm_eps", 1e-12),
        pad_id=hf.get("pad_token_id", 0), embed_scale=False, embed_norm=True, logits_bias=True,
        tie_output=True, num_classes=num_labels(hf), pooling="cls")


def to_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="bert", vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff,
                num_hidden_layers=cfg.num_encoder_layers, hidden_dropout_prob=cfg.dropout_rate,
                hidden_act=our_activation(cfg), max_position_embeddings=cfg.max_len,
                type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps, pad_token_id=cfg.pad_id,
                position_embedding_type="absolute", num_labels=cfg.num_classes, tie_word_embeddings=True)


def backbone(cfg: TransformerConfig, p: str, enc: tuple, emb: tuple) -> list[Tensor]:
    """BERT's embeddings and layers, stored under prefix `p` ("" or "bert."); also RoBERTa's."""
    rows = [copy(f"{p}embeddings.word_embeddings.weight", emb + ("embedding",)),
            copy(f"{p}embeddings.position_embeddings.weight", enc + ("embedder", "positions", "pos_embedding")),
            *norm_rows(f"{p}embeddings.LayerNorm", enc + ("embedder", "norm"))]
    if cfg.type_vocab_size:
        rows.append(copy(f"{p}embeddings.token_type_embeddings.weight",
                         enc + ("embedder", "token_types", "embedding")))
    for i in range(cfg.num_encoder_layers):
        layer, ours = f"{p}encoder.layer.{i}", enc + (f"layer_{i}",)
        rows += attn_rows(f"{layer}.attention", ours + ("self_attention",), cfg,
                          ("self.query", "self.key", "self.value", "output.dense"))
        rows += norm_rows(f"{layer}.attention.output.LayerNorm", ours + ("attention_block", "norm"))
        rows += linear_rows(f"{layer}.intermediate.dense", ours + ("mlp", "wi"))
        rows += linear_rows(f"{layer}.output.dense", ours + ("mlp", "wo"))
        rows += norm_rows(f"{layer}.output.LayerNorm", ours + ("mlp_block", "norm"))
    return rows


def tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    head = ARCHITECTURES[arch]
    enc, emb = encoder_paths(head)
    rows = backbone(cfg, "" if head == "encoder" else "bert.", enc, emb)
    if head == "masked_lm":
        return rows + [*linear_rows("cls.predictions.transform.dense", ("transform",)),
                       *norm_rows("cls.predictions.transform.LayerNorm", ("transform_norm",)),
                       copy("cls.predictions.bias", ("logits_bias",), aliases=("cls.predictions.decoder.bias",))]
    return rows + encoder_head_rows(head, pooler=("pooler.dense" if head == "encoder" else "bert.pooler.dense"),
                                    classifier="classifier")


FAMILY = Family("bert", ARCHITECTURES, to_config, to_hf, tensors,
                ignored=(r"cls\.predictions\.decoder\.weight", r".*position_ids"),
                unused=(r"cls\.seq_relationship\..*",), base_prefix="bert",
                build={"encoder": lambda cfg: Encoder(cfg, pooler=True)})
