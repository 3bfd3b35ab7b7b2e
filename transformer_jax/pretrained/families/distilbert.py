"""DistilBERT (Sanh et al. 2019): BERT's post-LN layers without token types or a pooler; the
sequence classifier is `pre_classifier` with relu (our pooler, `pooler_activation="relu"`), then
`classifier`."""

from __future__ import annotations

from transformer_jax.config import TransformerConfig
from transformer_jax.pretrained.families.base import (Family, activation, attn_rows, encoder_head_rows,
                                                      encoder_paths, linear_rows, norm_rows, num_labels,
                                                      our_activation)
from transformer_jax.pretrained.tensors import Tensor, copy

ARCHITECTURES = {"DistilBertModel": "encoder", "DistilBertForMaskedLM": "masked_lm",
                 "DistilBertForSequenceClassification": "sequence_classification",
                 "DistilBertForTokenClassification": "token_classification",
                 "DistilBertForQuestionAnswering": "question_answering"}


def to_config(hf: dict) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=hf["dim"], num_heads=hf["n_heads"], d_ff=hf["hidden_dim"],
        num_encoder_layers=hf["n_layers"], num_decoder_layers=0, dropout_rate=hf.get("dropout", 0.1),
        activation=activation(hf, "activation"), norm="layernorm", norm_position="post", position="learned",
        max_len=hf["max_position_embeddings"], type_vocab_size=0, norm_eps=1e-12,
        pad_id=hf.get("pad_token_id", 0), embed_scale=False, embed_norm=True, logits_bias=True,
        tie_output=True, num_classes=num_labels(hf), pooling="cls", pooler_activation="relu")


def to_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="distilbert", vocab_size=cfg.vocab_size, dim=cfg.d_model, n_heads=cfg.num_heads,
                hidden_dim=cfg.d_ff, n_layers=cfg.num_encoder_layers, dropout=cfg.dropout_rate,
                activation=our_activation(cfg), max_position_embeddings=cfg.max_len, pad_token_id=cfg.pad_id,
                sinusoidal_pos_embds=False, num_labels=cfg.num_classes, tie_word_embeddings=True)


def tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    head = ARCHITECTURES[arch]
    enc, emb = encoder_paths(head)
    p = "" if head == "encoder" else "distilbert."
    rows = [copy(f"{p}embeddings.word_embeddings.weight", emb + ("embedding",)),
            copy(f"{p}embeddings.position_embeddings.weight", enc + ("embedder", "positions", "pos_embedding")),
            *norm_rows(f"{p}embeddings.LayerNorm", enc + ("embedder", "norm"))]
    for i in range(cfg.num_encoder_layers):
        layer, ours = f"{p}transformer.layer.{i}", enc + (f"layer_{i}",)
        rows += attn_rows(f"{layer}.attention", ours + ("self_attention",), cfg, ("q_lin", "k_lin", "v_lin", "out_lin"))
        rows += norm_rows(f"{layer}.sa_layer_norm", ours + ("attention_block", "norm"))
        rows += linear_rows(f"{layer}.ffn.lin1", ours + ("mlp", "wi"))
        rows += linear_rows(f"{layer}.ffn.lin2", ours + ("mlp", "wo"))
        rows += norm_rows(f"{layer}.output_layer_norm", ours + ("mlp_block", "norm"))
    if head == "masked_lm":
        return rows + [*linear_rows("vocab_transform", ("transform",)),
                       *norm_rows("vocab_layer_norm", ("transform_norm",)),
                       copy("vocab_projector.bias", ("logits_bias",))]
    return rows + encoder_head_rows(head, pooler=None, classifier="classifier", seq_pooler="pre_classifier")


FAMILY = Family("distilbert", ARCHITECTURES, to_config, to_hf, tensors,
                ignored=(r"vocab_projector\.weight", r".*position_ids"), base_prefix="distilbert")
