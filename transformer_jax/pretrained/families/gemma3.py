"""Gemma 3, text only (Gemma Team 2025; `Gemma3ForCausalLM`, model_type gemma3_text).

Qwen3's layout (q/k RMSNorm per head, grouped-query attention, `layer_types`) plus, each as a
`TransformerConfig` option:
- (1 + w) RMSNorms everywhere, q/k norms included (`norm_scale_offset=1.0`);
- a norm after each sublayer too, 4 norms a layer (`sandwich_norm`): input_layernorm and
  post_attention_layernorm around attention, pre_/post_feedforward_layernorm around the MLP;
- embeddings times sqrt(hidden) (`embed_scale`), tied to the output by default;
- scores scaled by query_pre_attn_scalar^-0.5 (`attention_scale`), not head_dim^-0.5;
- a gelu-tanh gated MLP (`geglu_tanh`);
- interleaved sliding-window and global layers as per-layer specs, with their own rotary bases:
  `rotary_local_base` (rope_local_base_freq, 10k) on the windowed layers, `rotary_base`
  (rope_theta, 1M) on the global ones;
- `final_logit_softcapping` c: logits = c * tanh(logits / c) (`logits_softcap`).
attn_logit_softcapping, bidirectional attention and scaled rotary embeddings are refused by name.
"""

from __future__ import annotations

from transformer_jax.config import TransformerConfig
from transformer_jax.pretrained.families.base import Family, require, unsupported
from transformer_jax.pretrained.families.qwen3 import LAYER_TYPES, decoder_rows, layer_specs, layer_types_of

GEMMA_ACTIVATIONS = {"gelu_pytorch_tanh": "geglu_tanh", "gelu_new": "geglu_tanh", "gelu_fast": "geglu_tanh",
                     "gelu": "geglu"}


def _gemma3_rope(hf: dict) -> tuple[float, float]:
    """(global, local) rotary bases: transformers 5's `rope_parameters` per layer type, or the
    older `rope_theta` / `rope_local_base_freq` / `rope_scaling`. Default (unscaled) rotary only."""
    params = hf.get("rope_parameters") or {}
    if params and not set(params) <= set(LAYER_TYPES):  # one dict for both layer types
        params = {t: params for t in LAYER_TYPES}
    scaling = hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise unsupported("rope_scaling", scaling, "only the default rotary embedding (no scaling) is supported")
    for kind, rope in params.items():
        if (rope or {}).get("rope_type", "default") != "default":
            raise unsupported(f"rope_parameters.{kind}", rope,
                              "only the default rotary embedding (rope_type 'default', no scaling) is supported")
    full = (params.get("full_attention") or {}).get("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local = (params.get("sliding_attention") or {}).get("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
    return float(full), float(local)


def _gemma3_config(hf: dict) -> TransformerConfig:
    name = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if name not in GEMMA_ACTIVATIONS:
        raise unsupported("hidden_activation", name, f"supported: {', '.join(map(repr, GEMMA_ACTIVATIONS))}")
    require(hf, "attention_bias", (False,), False)
    require(hf, "attn_logit_softcapping", (None,), None)
    require(hf, "use_bidirectional_attention", (False, None), False)
    layers = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:  # older configs: every `sliding_window_pattern`-th layer is global
        pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    full, local = _gemma3_rope(hf)
    heads, head_dim = hf["num_attention_heads"], hf.get("head_dim", 256)
    scalar = hf.get("query_pre_attn_scalar", head_dim)
    if not isinstance(scalar, (int, float)) or isinstance(scalar, bool) or scalar <= 0:
        raise unsupported("query_pre_attn_scalar", scalar, "it must be a positive number")
    cap = hf.get("final_logit_softcapping")
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim, d_ff=hf["intermediate_size"],
        num_encoder_layers=0, num_decoder_layers=layers, dropout_rate=0.0, activation=GEMMA_ACTIVATIONS[name],
        norm="rmsnorm", norm_position="pre", position="rotary", rotary_base=full,
        rotary_local_base=local if local != full else None, max_len=hf["max_position_embeddings"],
        norm_eps=hf.get("rms_norm_eps", 1e-6), use_bias=False, pad_id=None, embed_scale=True,
        tie_output=hf.get("tie_word_embeddings", True), attention_scale=float(scalar) ** -0.5,
        decoder_attention=layer_specs(hf, list(types)), qk_norm=True, norm_scale_offset=1.0,
        sandwich_norm=True, logits_softcap=None if cap is None else float(cap))


def _gemma3_hf(cfg: TransformerConfig) -> dict:
    types, window = layer_types_of(cfg)
    scale = cfg.attention_scale if cfg.attention_scale is not None else cfg.resolved_head_dim ** -0.5
    scalar = scale ** -2.0
    local = cfg.rotary_local_base if cfg.rotary_local_base is not None else cfg.rotary_base
    activation = {"geglu_tanh": "gelu_pytorch_tanh", "geglu": "gelu"}.get(cfg.activation, cfg.activation)
    return dict(model_type="gemma3_text", vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.resolved_kv_heads,
                head_dim=cfg.resolved_head_dim, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.num_decoder_layers,
                hidden_activation=activation, max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
                attention_bias=False, attention_dropout=0.0, tie_word_embeddings=cfg.tie_output,
                query_pre_attn_scalar=round(scalar) if abs(scalar - round(scalar)) < 1e-6 * scalar else scalar,
                sliding_window=window, layer_types=types, final_logit_softcapping=cfg.logits_softcap,
                attn_logit_softcapping=None, use_bidirectional_attention=False,
                rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rotary_base},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": local}})


FAMILY = Family("gemma3", {"Gemma3ForCausalLM": "causal_lm"}, _gemma3_config, _gemma3_hf,
                lambda cfg, arch: decoder_rows(cfg, sandwich=True),
                ignored=(r".*rotary_emb\..*inv_freq", r"lm_head\.weight"), base_prefix="model")
