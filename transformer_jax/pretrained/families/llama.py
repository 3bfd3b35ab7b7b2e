"""Llama (Touvron et al. 2023) and Mistral (Jiang et al. 2023): pre-RMSNorm decoders with rotary
positions, SwiGLU and grouped-query attention; Mistral adds a sliding window.

Mistral's `sliding_window` W lets a query see itself and the W - 1 keys before it, which is our
`Windowed(W - 1)` (a window counts the keys *behind* the query).
"""

from __future__ import annotations

from transformer_jax.attention import Dense, Windowed
from transformer_jax.config import TransformerConfig
from transformer_jax.pretrained.families.base import Family, attn_rows, linear_rows, norm_rows, require, unsupported
from transformer_jax.pretrained.tensors import Tensor, copy, linear


def _rope_theta(hf: dict) -> float:
    """The rotary base; only the default (unscaled) rotary embedding is supported."""
    for field in ("rope_parameters", "rope_scaling"):  # transformers 5 and older configs
        rope = hf.get(field) or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise unsupported(field, rope, "only the default rotary embedding (rope_type 'default', no scaling) "
                                           "is supported")
    return float((hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10_000.0)))


def _llama_config(hf: dict, window: int | None = None) -> TransformerConfig:
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise unsupported("hidden_act", hf["hidden_act"], "supported: 'silu'")
    require(hf, "mlp_bias", (False,), False)
    spec = Dense() if window is None else Windowed(window - 1)
    heads = hf["num_attention_heads"]
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim"),
        d_ff=hf["intermediate_size"], num_encoder_layers=0, num_decoder_layers=hf["num_hidden_layers"],
        dropout_rate=0.0, activation="swiglu", norm="rmsnorm",
        norm_position="pre", position="rotary", rotary_base=_rope_theta(hf),
        max_len=hf["max_position_embeddings"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        use_bias=require(hf, "attention_bias", (False,), False), pad_id=None, embed_scale=False,
        tie_output=hf.get("tie_word_embeddings", False), decoder_attention=spec)


def _llama_hf(cfg: TransformerConfig, model_type: str = "llama") -> dict:
    hf = dict(model_type=model_type, vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
              num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.resolved_kv_heads,
              head_dim=cfg.resolved_head_dim, intermediate_size=cfg.d_ff,
              num_hidden_layers=cfg.num_decoder_layers, attention_dropout=0.0,
              hidden_act="silu", rope_theta=cfg.rotary_base, max_position_embeddings=cfg.max_len,
              rms_norm_eps=cfg.norm_eps, attention_bias=False, mlp_bias=False,
              tie_word_embeddings=cfg.tie_output)
    if model_type == "mistral":
        spec = cfg.decoder_specs[0] if cfg.num_decoder_layers else Dense()
        hf["sliding_window"] = spec.window + 1 if isinstance(spec, Windowed) else None
    return hf


def _mistral_config(hf: dict) -> TransformerConfig:
    return _llama_config(hf, hf.get("sliding_window"))


def tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    rows = [copy("model.embed_tokens.weight", ("embedding", "embedding")),
            *norm_rows("model.norm", ("decoder", "final_norm"), bias=False)]
    for i in range(cfg.num_decoder_layers):
        layer, ours = f"model.layers.{i}", ("decoder", f"layer_{i}")
        mlp = ours + ("mlp",)
        rows += [*norm_rows(f"{layer}.input_layernorm", ours + ("attention_block", "norm"), bias=False),
                 *attn_rows(f"{layer}.self_attn", ours + ("self_attention",), cfg,
                        ("q_proj", "k_proj", "v_proj", "o_proj"), bias=False),
                 *norm_rows(f"{layer}.post_attention_layernorm", ours + ("mlp_block", "norm"), bias=False),
                 *linear_rows(f"{layer}.mlp.gate_proj", mlp + ("wi",), bias=False),
                 *linear_rows(f"{layer}.mlp.up_proj", mlp + ("wi_gate",), bias=False),
                 *linear_rows(f"{layer}.mlp.down_proj", mlp + ("wo",), bias=False)]
    if not cfg.tie_output:
        rows.append(linear("lm_head.weight", ("decoder", "logits", "kernel")))
    return rows


LLAMA = Family("llama", {"LlamaForCausalLM": "causal_lm"}, _llama_config, _llama_hf, tensors,
               ignored=(r".*rotary_emb\.inv_freq", r"lm_head\.weight"), base_prefix="model")
MISTRAL = Family("mistral", {"MistralForCausalLM": "causal_lm"}, _mistral_config,
                 lambda cfg: _llama_hf(cfg, "mistral"), tensors,
                 ignored=(r".*rotary_emb\.inv_freq", r"lm_head\.weight"), base_prefix="model")
