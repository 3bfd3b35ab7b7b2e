"""The published architectures as values: config.json <-> `TransformerConfig`, and tensor tables.

Each `Family` knows its Hugging Face `config.json` fields (`to_config`, `to_hf`) and its tensor
names (`tensors`). Every architecture feature is an ordinary `TransformerConfig` option; nothing
here forks the model code. Conventions pinned against the reference implementation (tests):

- Mistral's `sliding_window` W lets a query see itself and the W - 1 keys before it, which is
  our `Windowed(W - 1)` (a window counts the keys *behind* the query).
- T5 does not scale attention scores (`attention_scale=1.0`) and, with tied embeddings, scales the
  decoder output by d_model^-0.5 before the head (`logits_scale`).
- BART's learned positions start at row 2 (`position_offset=2`); Marian's sinusoids use the paper's
  frequencies (`position="sinusoidal_paper"`) and are not stored in the checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from transformer_jax.attention import Dense, Windowed
from transformer_jax.config import TransformerConfig
from transformer_jax.model import DecoderLM, Encoder, EncoderClassifier, MaskedLM, Transformer
from transformer_jax.pretrained.tensors import (Tensor, bias_heads, conv1d_heads_out, copy, fused_qkv,
                                                heads_in, heads_out, linear, row_vector)

# Hugging Face activation names -> ours (gated variants are chosen by the family).
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
OUR_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def unsupported(field: str, value, valid: str) -> ValueError:
    return ValueError(f"config.json: {field}={value!r} is not supported; {valid}")


def require(hf: dict, field: str, allowed: tuple, default=None):
    """hf[field] (or `default`), which must be one of `allowed`."""
    value = hf.get(field, default)
    if value not in allowed:
        raise unsupported(field, value, f"supported: {', '.join(map(repr, allowed))}")
    return value


def activation(hf: dict, field: str) -> str:
    name = hf.get(field, "gelu")
    if name not in HF_ACTIVATIONS:
        raise unsupported(field, name, f"supported: {', '.join(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def num_labels(hf: dict) -> int:
    return int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    architectures: dict  # Hugging Face class name -> our model class
    to_config: Callable[[dict], TransformerConfig]
    to_hf: Callable[[TransformerConfig], dict]  # the config.json fields (no architectures)
    tensors: Callable[[TransformerConfig, str], list[Tensor]]  # (cfg, architecture)
    ignored: tuple[str, ...] = ()  # regexes: stored tensors that carry nothing we use

    def architecture_of(self, model_cls) -> str:
        return next(a for a, cls in self.architectures.items() if cls is model_cls)


def _attn(prefix: str, path: tuple, cfg: TransformerConfig, names=("q", "k", "v", "o"), bias=True):
    """Separate q/k/v/out nn.Linear projections (all families but GPT-2)."""
    n, kv, h = cfg.num_heads, cfg.resolved_kv_heads, cfg.resolved_head_dim
    rows = [heads_in(f"{prefix}.{names[0]}.weight", path + ("query", "kernel"), n, h),
            heads_in(f"{prefix}.{names[1]}.weight", path + ("key", "kernel"), kv, h),
            heads_in(f"{prefix}.{names[2]}.weight", path + ("value", "kernel"), kv, h),
            heads_out(f"{prefix}.{names[3]}.weight", path + ("out", "kernel"), n, h)]
    if bias:
        rows += [bias_heads(f"{prefix}.{names[0]}.bias", path + ("query", "bias"), n, h),
                 bias_heads(f"{prefix}.{names[1]}.bias", path + ("key", "bias"), kv, h),
                 bias_heads(f"{prefix}.{names[2]}.bias", path + ("value", "bias"), kv, h),
                 copy(f"{prefix}.{names[3]}.bias", path + ("out", "bias"))]
    return rows


def _linear(name: str, path: tuple, bias=True):
    rows = [linear(f"{name}.weight", path + ("kernel",))]
    return rows + [copy(f"{name}.bias", path + ("bias",))] if bias else rows


def _norm(name: str, path: tuple, bias=True):
    rows = [copy(f"{name}.weight", path + ("scale",))]
    return rows + [copy(f"{name}.bias", path + ("bias",))] if bias else rows


# --------------------------------------------------------------------------------------- BERT

def _bert_config(hf: dict) -> TransformerConfig:
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


def _bert_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="bert", vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff,
                num_hidden_layers=cfg.num_encoder_layers, hidden_dropout_prob=cfg.dropout_rate,
                attention_probs_dropout_prob=0.0, hidden_act=OUR_ACTIVATIONS.get(cfg.activation, cfg.activation),
                max_position_embeddings=cfg.max_len, type_vocab_size=cfg.type_vocab_size,
                layer_norm_eps=cfg.norm_eps, pad_token_id=cfg.pad_id, position_embedding_type="absolute",
                num_labels=cfg.num_classes, tie_word_embeddings=True)


def _bert_tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    bare = arch == "BertModel"
    p = "" if bare else "bert."
    enc = () if bare else ("encoder",)
    emb = ("embedding",) if arch == "BertForMaskedLM" else enc + ("embedding",)
    rows = [copy(f"{p}embeddings.word_embeddings.weight", emb + ("embedding",)),
            copy(f"{p}embeddings.position_embeddings.weight", enc + ("embedder", "positions", "pos_embedding")),
            copy(f"{p}embeddings.token_type_embeddings.weight", enc + ("embedder", "token_types", "embedding")),
            *_norm(f"{p}embeddings.LayerNorm", enc + ("embedder", "norm"))]
    for i in range(cfg.num_encoder_layers):
        layer, ours = f"{p}encoder.layer.{i}", enc + (f"layer_{i}",)
        rows += _attn(f"{layer}.attention", ours + ("self_attention",), cfg,
                      ("self.query", "self.key", "self.value", "output.dense"))
        rows += _norm(f"{layer}.attention.output.LayerNorm", ours + ("attention_block", "norm"))
        rows += _linear(f"{layer}.intermediate.dense", ours + ("mlp", "wi"))
        rows += _linear(f"{layer}.output.dense", ours + ("mlp", "wo"))
        rows += _norm(f"{layer}.output.LayerNorm", ours + ("mlp_block", "norm"))
    if arch == "BertForMaskedLM":
        rows += [*_linear("cls.predictions.transform.dense", ("transform",)),
                 *_norm("cls.predictions.transform.LayerNorm", ("transform_norm",)),
                 copy("cls.predictions.bias", ("logits_bias",), aliases=("cls.predictions.decoder.bias",))]
    if arch == "BertForSequenceClassification":
        rows += [*_linear("bert.pooler.dense", ("pooler",)), *_linear("classifier", ("classifier",))]
    return rows


BERT = Family(
    "bert", {"BertModel": Encoder, "BertForMaskedLM": MaskedLM, "BertForSequenceClassification": EncoderClassifier},
    _bert_config, _bert_hf, _bert_tensors,
    ignored=(r"(bert\.)?pooler\..*", r"cls\.predictions\.decoder\.weight", r".*position_ids",
             r"cls\.seq_relationship\..*"))


# --------------------------------------------------------------------------------------- GPT-2

def _gpt2_config(hf: dict) -> TransformerConfig:
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


def _gpt2_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="gpt2", vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_head=cfg.num_heads,
                n_inner=cfg.d_ff, n_layer=cfg.num_decoder_layers, resid_pdrop=cfg.dropout_rate,
                embd_pdrop=cfg.dropout_rate, attn_pdrop=0.0,
                activation_function=OUR_ACTIVATIONS.get(cfg.activation, cfg.activation),
                n_positions=cfg.max_len, layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_output)


def _gpt2_tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    n, h = cfg.num_heads, cfg.resolved_head_dim
    rows = [copy("transformer.wte.weight", ("embedding", "embedding")),
            copy("transformer.wpe.weight", ("decoder", "embedder", "positions", "pos_embedding")),
            *_norm("transformer.ln_f", ("decoder", "final_norm"))]
    for i in range(cfg.num_decoder_layers):
        layer, ours = f"transformer.h.{i}", ("decoder", f"layer_{i}")
        attn = ours + ("self_attention",)
        qkv = tuple(attn + (x,) for x in ("query", "key", "value"))
        rows += [*_norm(f"{layer}.ln_1", ours + ("attention_block", "norm")),
                 fused_qkv(f"{layer}.attn.c_attn.weight", tuple(p + ("kernel",) for p in qkv), n, h, False),
                 fused_qkv(f"{layer}.attn.c_attn.bias", tuple(p + ("bias",) for p in qkv), n, h, True),
                 conv1d_heads_out(f"{layer}.attn.c_proj.weight", attn + ("out", "kernel"), n, h),
                 copy(f"{layer}.attn.c_proj.bias", attn + ("out", "bias")),
                 *_norm(f"{layer}.ln_2", ours + ("mlp_block", "norm")),
                 copy(f"{layer}.mlp.c_fc.weight", ours + ("mlp", "wi", "kernel")),
                 copy(f"{layer}.mlp.c_fc.bias", ours + ("mlp", "wi", "bias")),
                 copy(f"{layer}.mlp.c_proj.weight", ours + ("mlp", "wo", "kernel")),
                 copy(f"{layer}.mlp.c_proj.bias", ours + ("mlp", "wo", "bias"))]
    if not cfg.tie_output:
        rows.append(linear("lm_head.weight", ("decoder", "logits", "kernel")))
    return rows


GPT2 = Family("gpt2", {"GPT2LMHeadModel": DecoderLM}, _gpt2_config, _gpt2_hf, _gpt2_tensors,
              ignored=(r".*\.attn\.(masked_)?bias", r"lm_head\.weight"))


# --------------------------------------------------------------------------------------- Llama, Mistral

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


def _llama_tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    rows = [copy("model.embed_tokens.weight", ("embedding", "embedding")),
            *_norm("model.norm", ("decoder", "final_norm"), bias=False)]
    for i in range(cfg.num_decoder_layers):
        layer, ours = f"model.layers.{i}", ("decoder", f"layer_{i}")
        mlp = ours + ("mlp",)
        rows += [*_norm(f"{layer}.input_layernorm", ours + ("attention_block", "norm"), bias=False),
                 *_attn(f"{layer}.self_attn", ours + ("self_attention",), cfg,
                        ("q_proj", "k_proj", "v_proj", "o_proj"), bias=False),
                 *_norm(f"{layer}.post_attention_layernorm", ours + ("mlp_block", "norm"), bias=False),
                 *_linear(f"{layer}.mlp.gate_proj", mlp + ("wi",), bias=False),
                 *_linear(f"{layer}.mlp.up_proj", mlp + ("wi_gate",), bias=False),
                 *_linear(f"{layer}.mlp.down_proj", mlp + ("wo",), bias=False)]
    if not cfg.tie_output:
        rows.append(linear("lm_head.weight", ("decoder", "logits", "kernel")))
    return rows


LLAMA = Family("llama", {"LlamaForCausalLM": DecoderLM}, _llama_config, _llama_hf, _llama_tensors,
               ignored=(r".*rotary_emb\.inv_freq", r"lm_head\.weight"))
MISTRAL = Family("mistral", {"MistralForCausalLM": DecoderLM}, _mistral_config,
                 lambda cfg: _llama_hf(cfg, "mistral"), _llama_tensors,
                 ignored=(r".*rotary_emb\.inv_freq", r"lm_head\.weight"))


# --------------------------------------------------------------------------------------- T5

# T5's "gated-gelu" uses gelu_new, the tanh approximation (v1.1, Flan-T5).
T5_FEED_FORWARD = {"relu": "relu", "gated-gelu": "geglu_tanh", "gated-silu": "swiglu"}


def _t5_config(hf: dict) -> TransformerConfig:
    proj = require(hf, "feed_forward_proj", tuple(T5_FEED_FORWARD), "relu")
    tied = hf.get("tie_word_embeddings", True)
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
        logits_scale=d ** -0.5 if tied else 1.0, pad_id=hf.get("pad_token_id", 0))


def _t5_hf(cfg: TransformerConfig) -> dict:
    return dict(model_type="t5", vocab_size=cfg.vocab_size, d_model=cfg.d_model, num_heads=cfg.num_heads,
                d_kv=cfg.resolved_head_dim, d_ff=cfg.d_ff, num_layers=cfg.num_encoder_layers,
                num_decoder_layers=cfg.num_decoder_layers, dropout_rate=cfg.dropout_rate,
                feed_forward_proj={v: k for k, v in T5_FEED_FORWARD.items()}.get(cfg.activation, cfg.activation),
                relative_attention_num_buckets=cfg.relative_buckets,
                relative_attention_max_distance=cfg.relative_max_distance, n_positions=cfg.max_len,
                layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_output, pad_token_id=cfg.pad_id,
                decoder_start_token_id=cfg.pad_id, eos_token_id=1, is_encoder_decoder=True)


def _t5_tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    gated = cfg.activation != "relu"
    rows = [copy("shared.weight", ("shared_embedding", "embedding"),
                 aliases=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")),
            copy("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 ("encoder", "relative_bias", "embedding")),
            copy("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 ("decoder", "relative_bias", "embedding")),
            *_norm("encoder.final_layer_norm", ("encoder", "final_norm"), bias=False),
            *_norm("decoder.final_layer_norm", ("decoder", "final_norm"), bias=False)]

    def mlp(prefix, ours):
        wi = ([linear(f"{prefix}.wi_0.weight", ours + ("wi", "kernel")),
               linear(f"{prefix}.wi_1.weight", ours + ("wi_gate", "kernel"))] if gated
              else [linear(f"{prefix}.wi.weight", ours + ("wi", "kernel"))])
        return wi + [linear(f"{prefix}.wo.weight", ours + ("wo", "kernel"))]

    for stack, layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        for i in range(layers):
            block, ours = f"{stack}.block.{i}.layer", (stack, f"layer_{i}")
            rows += _norm(f"{block}.0.layer_norm", ours + ("attention_block", "norm"), bias=False)
            rows += _attn(f"{block}.0.SelfAttention", ours + ("self_attention",), cfg, bias=False)
            ff = 1
            if stack == "decoder":
                rows += _norm(f"{block}.1.layer_norm", ours + ("cross_block", "norm"), bias=False)
                rows += _attn(f"{block}.1.EncDecAttention", ours + ("cross_attention",), cfg,
                              bias=False)
                ff = 2
            rows += _norm(f"{block}.{ff}.layer_norm", ours + ("mlp_block", "norm"), bias=False)
            rows += mlp(f"{block}.{ff}.DenseReluDense", ours + ("mlp",))
    if not cfg.tie_output:
        rows.append(linear("lm_head.weight", ("decoder", "logits", "kernel")))
    return rows


T5 = Family("t5", {"T5ForConditionalGeneration": Transformer}, _t5_config, _t5_hf, _t5_tensors,
            ignored=(r"lm_head\.weight",))


# --------------------------------------------------------------------------------------- BART, Marian

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
              activation_dropout=0.0, activation_function=OUR_ACTIVATIONS.get(cfg.activation, cfg.activation),
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
            rows += _norm(f"model.{stack}.layernorm_embedding", (stack, "embedder", "norm"))
        for i in range(layers):
            layer, ours = f"model.{stack}.layers.{i}", (stack, f"layer_{i}")
            names = ("q_proj", "k_proj", "v_proj", "out_proj")
            rows += _attn(f"{layer}.self_attn", ours + ("self_attention",), cfg, names)
            rows += _norm(f"{layer}.self_attn_layer_norm", ours + ("attention_block", "norm"))
            if stack == "decoder":
                rows += _attn(f"{layer}.encoder_attn", ours + ("cross_attention",), cfg, names)
                rows += _norm(f"{layer}.encoder_attn_layer_norm", ours + ("cross_block", "norm"))
            rows += _linear(f"{layer}.fc1", ours + ("mlp", "wi"))
            rows += _linear(f"{layer}.fc2", ours + ("mlp", "wo"))
            rows += _norm(f"{layer}.final_layer_norm", ours + ("mlp_block", "norm"))
    return rows


BART = Family("bart", {"BartForConditionalGeneration": Transformer}, _bart_config,
              lambda cfg: _seq2seq_hf(cfg, "bart"), _seq2seq_tensors, ignored=(r"lm_head\.weight",))
MARIAN = Family("marian", {"MarianMTModel": Transformer}, _marian_config,
                lambda cfg: _seq2seq_hf(cfg, "marian"), _seq2seq_tensors,
                ignored=(r"lm_head\.weight", r"model\.(encoder|decoder)\.embed_positions\.weight"))

from transformer_jax.pretrained.families_decoders import GEMMA3, QWEN3  # noqa: E402 (they build on the helpers above)

FAMILIES = (BERT, GPT2, T5, BART, MARIAN, LLAMA, MISTRAL, QWEN3, GEMMA3)
ARCHITECTURES = {arch: family for family in FAMILIES for arch in family.architectures}
