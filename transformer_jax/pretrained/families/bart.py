"""BART (Lewis et al. 2020) and Marian (Junczys-Dowmunt et al. 2018): post-LN encoder-decoders.

BART's learned positions start at row 2 (`position_offset=2`); Marian's sinusoids use the paper's
frequencies (`position="sinusoidal_paper"`) and are not stored in the checkpoint.
"""

from __future__ import annotations

from transformer_jax.config import TransformerConfig
from transformer_jax.pretrained.families.base import (Family, activation, attn_rows, linear_rows, norm_rows,
                                                      our_activation, require, unsupported)
from transformer_jax.pretrained.tensors import Tensor, copy, row_vector


def _seq2seq_config(hf: dict, **family) -> TransformerConfig:
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(a) != hf.get(b, hf.get(a)):
            raise unsupported(b, hf.get(b), f"it must equal {a}={hf.get(a)}")
    require(hf, "normalize_before", (False,), False)
    require(hf, "add_final_layer_norm", (False,), False)
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], num_heads=hf["encoder_attention_heads"],
        d_ff=hf["encoder_ffn_dim"], num_encoder_layers=hf["encoder_layers"],
        num_decoder_layers=hf["decoder_layers"], dropout_rate=hf.get("dropout", 0.1),
        activation=activation(hf, "activation_function"), norm="layernorm", norm_position="post",
        max_len=hf["max_position_embeddings"], norm_eps=1e-5, embed_scale=bool(hf.get("scale_embedding", False)),
        logits_bias=True, tie_output=True, share_embeddings=True, pad_id=hf.get("pad_token_id", 1), **family)


def _bart_config(hf: dict) -> TransformerConfig:
    return _seq2seq_config(hf, position="learned", position_offset=2, embed_norm=True)


def _marian_config(hf: dict) -> TransformerConfig:
    require(hf, "share_encoder_decoder_embeddings", (True,), True)
    if hf.get("decoder_vocab_size", hf["vocab_size"]) != hf["vocab_size"]:
        raise unsupported("decoder_vocab_size", hf["decoder_vocab_size"], f"it must equal vocab_size={hf['vocab_size']}")
    return _seq2seq_config(hf, position="sinusoidal_paper")


def _seq2seq_hf(cfg: TransformerConfig, model_type: str) -> dict:
    hf = dict(model_type=model_type, vocab_size=cfg.vocab_size, d_model=cfg.d_model,
              encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
              encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, encoder_layers=cfg.num_encoder_layers,
              decoder_layers=cfg.num_decoder_layers, dropout=cfg.dropout_rate, attention_dropout=0.0,
              activation_dropout=0.0, activation_function=our_activation(cfg),
              max_position_embeddings=cfg.max_len, scale_embedding=cfg.embed_scale, pad_token_id=cfg.pad_id,
              is_encoder_decoder=True, tie_word_embeddings=True)
    if model_type == "marian":
        hf.update(share_encoder_decoder_embeddings=True, decoder_vocab_size=cfg.vocab_size,
                  decoder_start_token_id=cfg.pad_id)
    return hf


def _seq2seq_tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    rows = [copy("model.shared.weight", ("shared_embedding", "embedding"),
                 aliases=("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")),
            row_vector("final_logits_bias", ("decoder", "logits_bias"))]
    for stack, layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        if cfg.position == "learned":
            rows.append(copy(f"model.{stack}.embed_positions.weight", (stack, "embedder", "positions", "pos_embedding")))
        if cfg.embed_norm:
            rows += norm_rows(f"model.{stack}.layernorm_embedding", (stack, "embedder", "norm"))
        for i in range(layers):
            layer, ours = f"model.{stack}.layers.{i}", (stack, f"layer_{i}")
            names = ("q_proj", "k_proj", "v_proj", "out_proj")
            rows += attn_rows(f"{layer}.self_attn", ours + ("self_attention",), cfg, names)
            rows += norm_rows(f"{layer}.self_attn_layer_norm", ours + ("attention_block", "norm"))
            if stack == "decoder":
                rows += attn_rows(f"{layer}.encoder_attn", ours + ("cross_attention",), cfg, names)
                rows += norm_rows(f"{layer}.encoder_attn_layer_norm", ours + ("cross_block", "norm"))
            rows += linear_rows(f"{layer}.fc1", ours + ("mlp", "wi"))
            rows += linear_rows(f"{layer}.fc2", ours + ("mlp", "wo"))
            rows += norm_rows(f"{layer}.final_layer_norm", ours + ("mlp_block", "norm"))
    return rows


BART = Family("bart", {"BartForConditionalGeneration": "seq2seq"}, _bart_config,
              lambda cfg: _seq2seq_hf(cfg, "bart"), _seq2seq_tensors, ignored=(r"lm_head\.weight",),
              base_prefix="model")
MARIAN = Family("marian", {"MarianMTModel": "seq2seq"}, _marian_config,
                lambda cfg: _seq2seq_hf(cfg, "marian"), _seq2seq_tensors,
                ignored=(r"lm_head\.weight", r"model\.(encoder|decoder)\.embed_positions\.weight"),
                base_prefix="model")
