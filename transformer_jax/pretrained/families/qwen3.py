"""Qwen3 (Qwen Team 2025): a Llama-shaped decoder (pre-RMSNorm, rotary positions, SwiGLU,
grouped-query attention) with an RMSNorm over each head of q and k (`qk_norm`), often a head_dim
other than hidden / heads, and tied embeddings in the small models.

`layer_types` (full_attention / sliding_attention) become one attention spec per layer; the
sliding-window convention is Mistral's: `sliding_window` W shows a query itself and the W - 1 keys
before it, our `Windowed(W - 1)`. The helpers here (`layer_specs`, `layer_types_of`,
`decoder_rows`) serve Gemma 3 too.
"""

from __future__ import annotations

from transformer_jax.attention import Dense, Windowed
from transformer_jax.config import TransformerConfig
from transformer_jax.pretrained.families.base import (Family, attn_rows, linear_rows, norm_rows, require,
                                                      unsupported)
from transformer_jax.pretrained.families.llama import _rope_theta
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


def decoder_rows(cfg: TransformerConfig, sandwich: bool) -> list[Tensor]:
    """Qwen3 / Gemma 3 tensor names: Llama's plus self_attn.{q,k}_norm, and with `sandwich`
    Gemma's four norms a layer."""
    rows = [copy("model.embed_tokens.weight", ("embedding", "embedding")),
            *norm_rows("model.norm", ("decoder", "final_norm"), bias=False)]
    for i in range(cfg.num_decoder_layers):
        layer, ours = f"model.layers.{i}", ("decoder", f"layer_{i}")
        attn, mlp = ours + ("self_attention",), ours + ("mlp",)
        rows += [*norm_rows(f"{layer}.input_layernorm", ours + ("attention_block", "norm"), bias=False),
                 *attn_rows(f"{layer}.self_attn", attn, cfg, ("q_proj", "k_proj", "v_proj", "o_proj"), bias=False),
                 copy(f"{layer}.self_attn.q_norm.weight", attn + ("query_norm", "scale")),
                 copy(f"{layer}.self_attn.k_norm.weight", attn + ("key_norm", "scale")),
                 *linear_rows(f"{layer}.mlp.gate_proj", mlp + ("wi",), bias=False),
                 *linear_rows(f"{layer}.mlp.up_proj", mlp + ("wi_gate",), bias=False),
                 *linear_rows(f"{layer}.mlp.down_proj", mlp + ("wo",), bias=False)]
        if sandwich:
            rows += [*norm_rows(f"{layer}.post_attention_layernorm", ours + ("attention_block", "post_norm"), bias=False),
                     *norm_rows(f"{layer}.pre_feedforward_layernorm", ours + ("mlp_block", "norm"), bias=False),
                     *norm_rows(f"{layer}.post_feedforward_layernorm", ours + ("mlp_block", "post_norm"), bias=False)]
        else:
            rows += norm_rows(f"{layer}.post_attention_layernorm", ours + ("mlp_block", "norm"), bias=False)
    if not cfg.tie_output:
        rows.append(linear("lm_head.weight", ("decoder", "logits", "kernel")))
    return rows




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


FAMILY = Family("qwen3", {"Qwen3ForCausalLM": "causal_lm"}, _qwen3_config, _qwen3_hf,
               lambda cfg, arch: decoder_rows(cfg, sandwich=False),
               ignored=(r".*rotary_emb\.inv_freq", r"lm_head\.weight"), base_prefix="model")
