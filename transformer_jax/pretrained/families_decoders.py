"""Qwen3 and Gemma 3 (text): config.json <-> `TransformerConfig`, and tensor tables.

Both are Llama-shaped decoders (pre-LN RMSNorm, rotary positions, gated MLP, grouped-query
attention) with q/k RMSNorm per head (`qk_norm`). Gemma 3 adds, each as a `TransformerConfig`
option: (1 + w) RMSNorms (`norm_scale_offset=1.0`), a norm after each sublayer too
(`sandwich_norm`: 4 norms per layer), embeddings times sqrt(hidden) (`embed_scale`), scores
scaled by `query_pre_attn_scalar`^-0.5 (`attention_scale`), a gelu-tanh gated MLP (`geglu_tanh`),
interleaved sliding-window and global layers as per-layer specs (`layer_types`), with their own
rotary bases (`rotary_local_base` for the windowed layers, `rotary_base` for the global ones),
and `final_logit_softcapping` (`logits_softcap`).

The sliding-window convention is Mistral's: `sliding_window` W shows a query itself and the
W - 1 keys before it, our `Windowed(W - 1)`.
"""

from __future__ import annotations

from transformer_jax.attention import Dense, Windowed
from transformer_jax.config import TransformerConfig
from transformer_jax.model import DecoderLM
from transformer_jax.pretrained.families import (Family, _attn, _linear, _norm, _rope_theta, require,
                                                 unsupported)
from transformer_jax.pretrained.tensors import Tensor, copy, linear

LAYER_TYPES = ("full_attention", "sliding_attention")


def layer_specs(hf: dict, layer_types: list) -> tuple:
    """config.json's per-layer `layer_types` -> one attention spec per layer: Dense() for
    full_attention, Windowed(sliding_window - 1) for sliding_attention."""
    layers = hf["num_hidden_layers"]
    if len(layer_types) != layers or any(t not in LAYER_TYPES for t in layer_types):
        raise unsupported("layer_types", layer_types, f"expected {layers} entries, each one of "
                                                      f"{', '.join(map(repr, LAYER_TYPES))}")
    window = hf.get("sliding_window")
    if "sliding_attention" in layer_types and (not isinstance(window, int) or window < 1):
        raise unsupported("sliding_window", window, "sliding_attention layers need a positive int window")
    return tuple(Windowed(window - 1) if t == "sliding_attention" else Dense() for t in layer_types)


def layer_types_of(cfg: TransformerConfig) -> tuple[list[str], int | None]:
    """Our per-layer decoder specs -> (`layer_types`, `sliding_window`); a named error for a spec
    with no equivalent, or windowed layers of different widths."""
    types, windows = [], set()
    for i, spec in enumerate(cfg.decoder_specs):
        if isinstance(spec, Windowed):
            types.append("sliding_attention")
            windows.add(spec.window + 1)
        elif isinstance(spec, Dense):
            types.append("full_attention")
        else:
            raise ValueError(f"TransformerConfig.decoder_attention[{i}]={spec!r} has no Hugging Face "
                             "equivalent: layer_types holds Dense() (full_attention) or Windowed(w) "
                             "(sliding_attention) layers")
    if len(windows) > 1:
        raise ValueError(f"TransformerConfig.decoder_attention mixes windows {sorted(w - 1 for w in windows)}; "
                         "config.json has one sliding_window for every sliding_attention layer")
    return types, (windows.pop() if windows else None)


def _decoder_rows(cfg: TransformerConfig, sandwich: bool) -> list[Tensor]:
    """Qwen3 / Gemma 3 tensor names: Llama's plus self_attn.{q,k}_norm, and with `sandwich`
    Gemma's four norms a layer."""
    rows = [copy("model.embed_tokens.weight", ("embedding", "embedding")),
            *_norm("model.norm", ("decoder", "final_norm"), bias=False)]
    for i in range(cfg.num_decoder_layers):
        layer, ours = f"model.layers.{i}", ("decoder", f"layer_{i}")
        attn, mlp = ours + ("self_attention",), ours + ("mlp",)
        rows += [*_norm(f"{layer}.input_layernorm", ours + ("attention_block", "norm"), bias=False),
                 *_attn(f"{layer}.self_attn", attn, cfg, ("q_proj", "k_proj", "v_proj", "o_proj"), bias=False),
                 copy(f"{layer}.self_attn.q_norm.weight", attn + ("query_norm", "scale")),
                 copy(f"{layer}.self_attn.k_norm.weight", attn + ("key_norm", "scale")),
                 *_linear(f"{layer}.mlp.gate_proj", mlp + ("wi",), bias=False),
                 *_linear(f"{layer}.mlp.up_proj", mlp + ("wi_gate",), bias=False),
                 *_linear(f"{layer}.mlp.down_proj", mlp + ("wo",), bias=False)]
        if sandwich:
            rows += [*_norm(f"{layer}.post_attention_layernorm", ours + ("attention_block", "post_norm"), bias=False),
                     *_norm(f"{layer}.pre_feedforward_layernorm", ours + ("mlp_block", "norm"), bias=False),
                     *_norm(f"{layer}.post_feedforward_layernorm", ours + ("mlp_block", "post_norm"), bias=False)]
        else:
            rows += _norm(f"{layer}.post_attention_layernorm", ours + ("mlp_block", "norm"), bias=False)
    if not cfg.tie_output:
        rows.append(linear("lm_head.weight", ("decoder", "logits", "kernel")))
    return rows


# --------------------------------------------------------------------------------------- Qwen3

def _qwen3_config(hf: dict) -> TransformerConfig:
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise unsupported("hidden_act", hf["hidden_act"], "supported: 'silu'")
    require(hf, "attention_bias", (False,), False)
    layers = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:  # older configs: the layers from max_window_layers on slide, if any do
        sliding = hf.get("use_sliding_window", False) and hf.get("sliding_window") is not None
        first = hf.get("max_window_layers", layers)
        types = ["sliding_attention" if sliding and i >= first else "full_attention" for i in range(layers)]
    heads = hf["num_attention_heads"]
    return TransformerConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim"),
        d_ff=hf["intermediate_size"], num_encoder_layers=0, num_decoder_layers=layers, dropout_rate=0.0,
        activation="swiglu", norm="rmsnorm", norm_position="pre", position="rotary",
        rotary_base=_rope_theta(hf), max_len=hf["max_position_embeddings"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        use_bias=False, pad_id=None, embed_scale=False, tie_output=hf.get("tie_word_embeddings", False),
        decoder_attention=layer_specs(hf, list(types)), qk_norm=True)


def _qwen3_hf(cfg: TransformerConfig) -> dict:
    types, window = layer_types_of(cfg)
    sliding = window is not None
    return dict(model_type="qwen3", vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.resolved_kv_heads,
                head_dim=cfg.resolved_head_dim, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.num_decoder_layers,
                attention_dropout=0.0, hidden_act="silu", max_position_embeddings=cfg.max_len,
                rms_norm_eps=cfg.norm_eps, attention_bias=False, tie_word_embeddings=cfg.tie_output,
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rotary_base},
                use_sliding_window=sliding, sliding_window=window,
                max_window_layers=types.index("sliding_attention") if sliding else cfg.num_decoder_layers,
                layer_types=types)


QWEN3 = Family("qwen3", {"Qwen3ForCausalLM": DecoderLM}, _qwen3_config, _qwen3_hf,
               lambda cfg, arch: _decoder_rows(cfg, sandwich=False),
               ignored=(r".*rotary_emb\.inv_freq", r"lm_head\.weight"))


# --------------------------------------------------------------------------------------- Gemma 3

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


GEMMA3 = Family("gemma3", {"Gemma3ForCausalLM": DecoderLM}, _gemma3_config, _gemma3_hf,
                lambda cfg, arch: _decoder_rows(cfg, sandwich=True),
                ignored=(r".*rotary_emb\..*inv_freq", r"lm_head\.weight"))
