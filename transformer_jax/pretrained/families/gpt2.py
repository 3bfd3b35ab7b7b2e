"""GPT-2 (Radford et al. 2019): pre-LN decoder, learned positions, Conv1D layers with fused q/k/v."""

from __future__ import annotations

from transformer_jax.config import TransformerConfig
from transformer_jax.pretrained.families.base import Family, activation, norm_rows, our_activation, require
from transformer_jax.pretrained.tensors import Tensor, conv1d_heads_out, copy, fused_qkv, linear


def to_config(hf: dict) -> TransformerConfig:
    require(hf, "scale_attn_weights", (True,), True)
    require(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
    require(hf, "add_cross_attention", (False,), False)
    d = hf["n_embd"]
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=d, num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
        num_encoder_layers=0, num_decoder_layers=hf["n_layer"], dropout_rate=hf.get("resid_pdrop", 0.1),
        activation=activation(hf, "activation_function"), norm="layernorm", norm_position="pre",
        position="learned", max_len=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        pad_id=None, embed_scale=False, tie_output=hf.get("tie_word_embeddings", True))


def to_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="gpt2", vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_head=cfg.num_heads,
                n_inner=cfg.d_ff, n_layer=cfg.num_decoder_layers, resid_pdrop=cfg.dropout_rate,
                embd_pdrop=cfg.dropout_rate, attn_pdrop=0.0,
                activation_function=our_activation(cfg),
                n_positions=cfg.max_len, layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_output)


def tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    n, h = cfg.num_heads, cfg.resolved_head_dim
    rows = [copy("transformer.wte.weight", ("embedding", "embedding")),
            copy("transformer.wpe.weight", ("decoder", "embedder", "positions", "pos_embedding")),
            *norm_rows("transformer.ln_f", ("decoder", "final_norm"))]
    for i in range(cfg.num_decoder_layers):
        layer, ours = f"transformer.h.{i}", ("decoder", f"layer_{i}")
        attn = ours + ("self_attention",)
        qkv = tuple(attn + (x,) for x in ("query", "key", "value"))
        rows += [*norm_rows(f"{layer}.ln_1", ours + ("attention_block", "norm")),
                 fused_qkv(f"{layer}.attn.c_attn.weight", tuple(p + ("kernel",) for p in qkv), n, h, False),
                 fused_qkv(f"{layer}.attn.c_attn.bias", tuple(p + ("bias",) for p in qkv), n, h, True),
                 conv1d_heads_out(f"{layer}.attn.c_proj.weight", attn + ("out", "kernel"), n, h),
                 copy(f"{layer}.attn.c_proj.bias", attn + ("out", "bias")),
                 *norm_rows(f"{layer}.ln_2", ours + ("mlp_block", "norm")),
                 copy(f"{layer}.mlp.c_fc.weight", ours + ("mlp", "wi", "kernel")),
                 copy(f"{layer}.mlp.c_fc.bias", ours + ("mlp", "wi", "bias")),
                 copy(f"{layer}.mlp.c_proj.weight", ours + ("mlp", "wo", "kernel")),
                 copy(f"{layer}.mlp.c_proj.bias", ours + ("mlp", "wo", "bias"))]
    if not cfg.tie_output:
        rows.append(linear("lm_head.weight", ("decoder", "logits", "kernel")))
    return rows


FAMILY = Family("gpt2", {"GPT2LMHeadModel": "causal_lm"}, to_config, to_hf, tensors,
                ignored=(r".*\.attn\.(masked_)?bias", r"lm_head\.weight"), base_prefix="transformer")
