"""Transformer models built from one set of blocks (Vaswani et al. 2017).

- `Transformer`: encoder-decoder; `encode` and `decode` run the two halves apart.
- `EncoderClassifier`, `TokenClassifier`, `QuestionAnswering` and `MaskedLM`: encoder-only
  (BERT-style) with a sequence-classification, per-token classification, span (start/end) or MLM head.
- `DecoderLM`: decoder-only (GPT-style) language model.

Alphabet: B batch, S source length, T target length, D model dim, V vocab.
Padding is token 0; packed sequences come with segment ids (0 = padding) and per-segment positions.

Every top-level model also has `forward(input_ids, attention_mask=None, ...)`, which takes the
reference library's input names and returns a dict under its output names (`last_hidden_state`,
`logits`, `start_logits`/`end_logits`): `model.apply(variables, **tokenizer_output, method="forward")`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from transformer_jax.attention import Dense
from transformer_jax.attention.masks import segment_ids_from_tokens
from transformer_jax.attention.module import MultiHeadAttention
from transformer_jax.config import GATED, TransformerConfig
from transformer_jax.layers import (MLP, Dropout, Embed, LearnedPositions, RelativePositionBias, activation_fn,
                                    dense, norm, partitioned, positions_from_segments, sinusoidal)
from transformer_jax.moe import MoEMLP
from transformer_jax.scan import apply_layers, decoder_kinds, encoder_kinds, sow_hidden


def _default_segments(tokens, pad_id: int | None):
    """Unpacked segment ids: 1 for real tokens, 0 for `pad_id` (no padding when pad_id is None)."""
    return jnp.ones(tokens.shape, jnp.int32) if pad_id is None else segment_ids_from_tokens(tokens, pad_id)


def _segments_and_positions(tokens, segment_ids, positions, pad_id: int | None):
    """Fill in unpacked defaults: segments from `pad_id`; positions 0..T-1 (restarting at each
    packed segment)."""
    if segment_ids is None:
        segment_ids = _default_segments(tokens, pad_id)
    if positions is None:
        positions = positions_from_segments(segment_ids)
    return segment_ids, positions


def _norm(cfg: TransformerConfig, name: str):
    return norm(cfg.norm, cfg.compute_dtype, cfg.params_dtype, name, cfg.norm_eps, cfg.norm_scale_offset)


class Residual(nn.Module):
    """Post-LN `norm(x + dropout(f(x)))` (the paper) or pre-LN `x + dropout(f(norm(x)))`, with
    `sandwich_norm` `x + dropout(post_norm(f(norm(x))))` (Gemma 2/3)."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x, sublayer, deterministic: bool):
        cfg = self.cfg
        layer_norm = _norm(cfg, "norm")
        if cfg.norm_position == "pre":
            y = sublayer(layer_norm(x))
            if cfg.sandwich_norm:
                y = _norm(cfg, "post_norm")(y)
            return x + Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        y = sublayer(x)
        return layer_norm(x + Dropout(cfg.dropout_rate)(y, deterministic=deterministic))


def _attention(cfg: TransformerConfig, spec, causal: bool, name: str, cross: bool = False):
    return MultiHeadAttention(
        num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, spec=spec, causal=causal, cross=cross,
        rotary_base=cfg.rotary_base_of(spec) if cfg.position == "rotary" and not cross else None,
        cache_len=cfg.max_len, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
        num_kv_heads=cfg.num_kv_heads, use_bias=cfg.use_bias, scale=cfg.attention_scale,
        qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps, norm_offset=cfg.norm_scale_offset, name=name)


def _mlp(cfg: TransformerConfig, moe: bool, segment_ids):
    """The block's feed-forward h -> h: dense, or a mixture of experts where `cfg.moe_layers` says
    (moe.py), which leaves the padding tokens of `segment_ids` unrouted."""
    if moe:
        experts = MoEMLP(cfg.num_experts, cfg.d_ff, cfg.activation, cfg.moe_top_k, cfg.moe_capacity_factor,
                         cfg.moe_load_balance_loss, cfg.moe_router_z_loss, cfg.compute_dtype, cfg.params_dtype,
                         cfg.use_bias, name="mlp")
        return lambda h: experts(h, segment_ids)
    return MLP(cfg.d_ff, cfg.activation, cfg.compute_dtype, cfg.params_dtype, cfg.use_bias, name="mlp")


class EncoderBlock(nn.Module):
    """Self-attention then feed-forward, each in a residual: x [B, S, D] -> [B, S, D].

    Usable alone: `EncoderBlock(cfg)(x)` attends over all of x (no padding, positions 0..S-1).
    """

    cfg: TransformerConfig
    spec: object = Dense()
    moe: bool = False  # a mixture-of-experts feed-forward (cfg.num_experts experts) instead of the MLP

    @nn.compact
    def __call__(self, x, segment_ids=None, positions=None, deterministic: bool = True, bias=None):
        cfg = self.cfg
        attn = _attention(cfg, self.spec, False, "self_attention")
        x = Residual(cfg, name="attention_block")(
            x, lambda h: attn(h, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                              q_positions=positions, bias=bias), deterministic)
        x = Residual(cfg, name="mlp_block")(x, _mlp(cfg, self.moe, segment_ids), deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderBlock(nn.Module):
    """Causal self-attention, optional cross-attention to the encoder, then feed-forward.

    Usable alone: `DecoderBlock(cfg, cross_spec=None)(x)` is a GPT block over x [B, T, D].
    """

    cfg: TransformerConfig
    spec: object = Dense()
    cross_spec: object | None = None  # None: decoder-only, no cross-attention
    moe: bool = False  # a mixture-of-experts feed-forward (cfg.num_experts experts) instead of the MLP

    @nn.compact
    def __call__(self, x, segment_ids=None, positions=None, encoded=None, src_segment_ids=None,
                 deterministic: bool = True, decode: bool | str = False, bias=None):
        cfg = self.cfg
        attn = _attention(cfg, self.spec, True, "self_attention")
        x = Residual(cfg, name="attention_block")(
            x, lambda h: attn(h, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                              q_positions=positions, bias=bias, decode=decode), deterministic)
        if self.cross_spec is not None:
            if encoded is None and not decode:
                raise ValueError("DecoderBlock with cross_spec needs `encoded` (the encoder output)")
            cross = _attention(cfg, self.cross_spec, False, "cross_attention", cross=True)
            x = Residual(cfg, name="cross_block")(
                x, lambda h: cross(h, encoded, q_segment_ids=segment_ids,
                                   kv_segment_ids=src_segment_ids, decode=decode), deterministic)
        x = Residual(cfg, name="mlp_block")(x, _mlp(cfg, self.moe, segment_ids), deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Embedder(nn.Module):
    """Tokens -> embeddings (+ token types) + additive positions (none for rotary and relative),
    then an optional norm (BERT, BART) and dropout; factorised embeddings (ALBERT, `embed_dim` <
    d_model) are projected up to d_model last."""

    cfg: TransformerConfig
    embed: Embed

    @nn.compact
    def __call__(self, tokens, positions, deterministic: bool, token_types=None):
        cfg = self.cfg
        width = cfg.resolved_embed_dim  # E: d_model unless factorised
        x = self.embed(tokens)  # [B T E]
        if cfg.type_vocab_size:
            types = jnp.zeros_like(tokens) if token_types is None else token_types
            table = Embed(cfg.type_vocab_size, width, cfg.compute_dtype, cfg.params_dtype,
                          scale=False, name="token_types")
            x = x + table(types)
        elif token_types is not None:
            raise ValueError("token_types were given but TransformerConfig.type_vocab_size is 0")
        if cfg.position in ("sinusoidal", "sinusoidal_paper"):
            x = x + sinusoidal(positions, width, cfg.compute_dtype, cfg.position == "sinusoidal_paper")
        elif cfg.position == "learned":
            if tokens.shape[1] > cfg.max_len:
                raise ValueError(f"sequence length {tokens.shape[1]} exceeds TransformerConfig.max_len="
                                 f"{cfg.max_len}, the size of the learned position table; truncate the "
                                 "input or use a model with a larger max_len")
            x = x + LearnedPositions(cfg.max_len, width, cfg.compute_dtype, cfg.params_dtype,
                                     cfg.position_offset, name="positions")(positions)
        if cfg.embed_norm:
            x = _norm(cfg, "norm")(x)
        x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if width != cfg.d_model:  # [B T E] -> [B T D]
            x = dense(cfg.d_model, (None, "embed"), cfg.compute_dtype, cfg.params_dtype, "projection")(x)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _final_norm(cfg: TransformerConfig, x):
    """Pre-LN stacks end with a norm; post-LN stacks are already normalised."""
    if cfg.norm_position == "pre":
        return _norm(cfg, "final_norm")(x)
    return x


def _relative_bias(cfg: TransformerConfig, bidirectional: bool):
    return RelativePositionBias(cfg.num_heads, cfg.relative_buckets, cfg.relative_max_distance,
                                bidirectional, cfg.compute_dtype, cfg.params_dtype, name="relative_bias")


def _embed(cfg: TransformerConfig, name: str | None = None) -> Embed:
    return Embed(cfg.vocab_size, cfg.resolved_embed_dim, cfg.compute_dtype, cfg.params_dtype, cfg.embed_scale, name=name)


class Encoder(nn.Module):
    """The encoder stack: tokens [B, S] -> [B, S, D]. Builds its own `embedding` unless given one
    to share (the encoder-decoder shares it with the decoder). `pooler=True` adds BERT's tanh
    pooler over the first token (the reference's bare model `pooler_output`, from `forward`)."""

    cfg: TransformerConfig
    embed: Embed | None = None
    pooler: bool = False

    def __call__(self, tokens, segment_ids=None, positions=None, deterministic: bool = True,
                 token_types=None):
        return self.run(tokens, segment_ids, positions, deterministic, token_types)[0]

    @nn.compact
    def run(self, tokens, segment_ids=None, positions=None, deterministic: bool = True, token_types=None):
        """-> (hidden [B, S, D], pooled [B, D] or None without a pooler)."""
        cfg = self.cfg
        segment_ids, positions = _segments_and_positions(tokens, segment_ids, positions, cfg.pad_id)
        embed = self.embed if self.embed is not None else _embed(cfg, "embedding")
        x = Embedder(cfg, embed, name="embedder")(tokens, positions, deterministic, token_types)
        bias = _relative_bias(cfg, True)(positions, positions) if cfg.position == "relative" else None
        # EncoderBlock(x, segment_ids, positions, deterministic, bias): deterministic (4) is static
        x = apply_layers(cfg, EncoderBlock, encoder_kinds(cfg), (4,), x, segment_ids, positions,
                         deterministic, bias)
        x = _final_norm(cfg, x)
        sow_hidden(self, "last", x)  # only for tj.hidden_states
        if not self.pooler:
            return x, None
        return x, _pool(cfg, x[:, 0])

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True,
                **tokenizer_extras):
        """The reference's bare model: {"last_hidden_state" [B, S, D], "pooler_output" [B, D] with a
        pooler}. Every layer's hidden state (the reference's `output_hidden_states=True`):
        `tj.hidden_states(model, variables, **inputs, method="forward")`, a tuple of num_layers + 1
        arrays [B, S, D] (embedding output, then each layer's; the last is `last_hidden_state`)."""
        _no_model_inputs(tokenizer_extras)
        x, pooled = self.run(input_ids, _segments(input_ids, attention_mask), None, deterministic, token_type_ids)
        return {"last_hidden_state": x} if pooled is None else {"last_hidden_state": x, "pooler_output": pooled}


def _pool(cfg: TransformerConfig, first):
    """BERT's pooler: activation(dense(first token)) [B, D] -> [B, D] (tanh; DistilBERT: relu)."""
    h = dense(cfg.d_model, ("embed", "mlp"), cfg.compute_dtype, cfg.params_dtype, "pooler")(first)
    return nn.tanh(h) if cfg.pooler_activation == "tanh" else nn.relu(h)


# what a tokenizer call returns beside the model inputs (`model.apply(v, **tok(texts), method="forward")`)
_TOKENIZER_ONLY = frozenset({"word_ids", "sequence_ids", "offset_mapping", "overflow_to_sample_mapping",
                             "special_tokens_mask", "length"})


def _no_model_inputs(extras: dict) -> None:
    """`forward` ignores a tokenizer's bookkeeping outputs; anything else is a misspelt input."""
    unknown = sorted(set(extras) - _TOKENIZER_ONLY)
    if "output_hidden_states" in unknown:
        raise TypeError("forward() takes no output_hidden_states; every layer's hidden state comes from "
                        "tj.hidden_states(model, variables, **inputs, method=\"forward\")")
    if unknown:
        raise TypeError(f"forward() got unexpected input(s) {', '.join(unknown)}; it takes input_ids, "
                        f"attention_mask, token_type_ids (encoders), decoder_input_ids (seq2seq) and ignores "
                        f"{', '.join(sorted(_TOKENIZER_ONLY))}")


def _segments(input_ids, attention_mask):
    """The reference's attention_mask (1 = attend, 0 = padding; None = attend everywhere) as our
    segment ids [B, S]."""
    if attention_mask is None:
        return jnp.ones(input_ids.shape, jnp.int32)
    return jnp.asarray(attention_mask, jnp.int32)


def _output_logits(module: nn.Module, cfg: TransformerConfig, embed: Embed, x):
    """[B, T, D] -> float32 logits [B, T, V]: the tied table or an untied `logits` projection,
    after `logits_scale`, plus the optional `logits_bias`, then the optional `logits_softcap`."""
    if cfg.logits_scale != 1.0:
        x = x * jnp.asarray(cfg.logits_scale, x.dtype)
    if cfg.tie_output:
        logits = embed.attend(x)
    else:
        logits = dense(cfg.vocab_size, ("embed", "vocab"), cfg.compute_dtype, cfg.params_dtype, "logits",
                       use_bias=False)(x)
    logits = logits.astype(jnp.float32)
    if cfg.logits_bias:
        logits = logits + module.param("logits_bias", partitioned(nn.initializers.zeros_init(), "vocab"),
                                       (cfg.vocab_size,), cfg.params_dtype).astype(jnp.float32)
    if cfg.logits_softcap is not None:  # c * tanh(logits / c) (Gemma 2's final_logit_softcapping)
        logits = cfg.logits_softcap * jnp.tanh(logits / cfg.logits_softcap)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Decoder(nn.Module):
    """The decoder stack. `cross=False` makes it a decoder-only language model."""

    cfg: TransformerConfig
    embed: Embed | None = None
    cross: bool = True

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, encoded=None, src_segment_ids=None,
                 deterministic: bool = True, decode: bool | str = False, logits_at=None):
        """[B, T] tokens -> [B, T, V] float32 logits; `decode=True` runs a cached step, and
        `decode="prefill"` (`attention.module.PREFILL`) one on an empty cache (a generation's first).

        Decoder inputs are never padding (T5 and Marian start with the pad id): without segment
        ids every token is real, which causal attention makes harmless for trailing padding.
        A cached step takes T >= 1 positions per row (T > 1: a parallel prefill of the prompt or a
        chunk of draft tokens); with segment ids [B, T] (1 real, 0 right padding) row b's cache
        moves on by its own number of real tokens. `logits_at` [B, K] int: only the logits at these
        positions of the chunk ([B, K, V]), e.g. each row's last prompt token.
        """
        cfg = self.cfg
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        if decode:  # the position is the number of positions already cached, per row
            index = self.variable("cache", "decode_index", lambda: jnp.zeros(tokens.shape[:1], jnp.int32))
            positions = index.value[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
            index.value = index.value + jnp.sum(segment_ids != 0, axis=1).astype(jnp.int32)
        elif positions is None:
            positions = positions_from_segments(segment_ids)
        embed = self.embed if self.embed is not None else _embed(cfg, "embedding")
        x = Embedder(cfg, embed, name="embedder")(tokens, positions, deterministic)
        bias = None
        if cfg.position == "relative":  # while decoding, the keys are the cache's slots
            kv_positions = jnp.arange(cfg.max_len, dtype=jnp.int32)[None] if decode else positions
            bias = _relative_bias(cfg, False)(positions, kv_positions)
        # DecoderBlock(x, segment_ids, positions, encoded, src_segment_ids, deterministic, decode,
        # bias): deterministic (6) and decode (7) are static
        x = apply_layers(cfg, DecoderBlock, decoder_kinds(cfg, self.cross), (6, 7), x, segment_ids,
                         positions, encoded, src_segment_ids, deterministic, decode, bias, remat=not decode)
        if logits_at is not None:
            x = jnp.take_along_axis(x, jnp.asarray(logits_at, jnp.int32)[..., None], axis=1)  # [B K D]
        x = _final_norm(cfg, x)
        if logits_at is None and not decode:
            sow_hidden(self, "last", x)  # only for tj.hidden_states
        return _output_logits(self, cfg, embed, x)


class Transformer(nn.Module):
    """The encoder-decoder of "Attention Is All You Need".

    `logits[:, t]` predicts the token that follows `tgt_in[:, t]`.
    """

    cfg: TransformerConfig

    def setup(self):
        cfg = self.cfg
        if cfg.share_embeddings:
            self.shared_embedding = _embed(cfg)
            src_embed = tgt_embed = self.shared_embedding
        else:
            self.src_embedding, self.tgt_embedding = _embed(cfg), _embed(cfg)
            src_embed, tgt_embed = self.src_embedding, self.tgt_embedding
        self.encoder = Encoder(cfg, src_embed)
        self.decoder = Decoder(cfg, tgt_embed)

    def encode(self, src, *, src_segment_ids=None, src_positions=None, deterministic: bool = True):
        """[B, S] -> [B, S, D]."""
        return self.encoder(src, src_segment_ids, src_positions, deterministic)

    def decode(self, encoded, src, tgt_in, *, src_segment_ids=None, tgt_segment_ids=None,
               tgt_positions=None, deterministic: bool = True, decode: bool | str = False, logits_at=None):
        """encoded [B, S, D], src [B, S] (for its padding), tgt_in [B, T] -> logits [B, T, V] float32.
        While decoding, `tgt_segment_ids` mark right padding of a multi-token chunk (see `Decoder`)."""
        src_seg = _default_segments(src, self.cfg.pad_id) if src_segment_ids is None else src_segment_ids
        if decode:
            tgt_positions = None
        return self.decoder(tgt_in, tgt_segment_ids, tgt_positions, encoded, src_seg, deterministic, decode,
                            logits_at)

    def __call__(self, src, tgt_in, *, src_segment_ids=None, src_positions=None, tgt_segment_ids=None,
                 tgt_positions=None, deterministic: bool = True):
        encoded = self.encode(src, src_segment_ids=src_segment_ids, src_positions=src_positions,
                              deterministic=deterministic)
        return self.decode(encoded, src, tgt_in, src_segment_ids=src_segment_ids,
                           tgt_segment_ids=tgt_segment_ids, tgt_positions=tgt_positions,
                           deterministic=deterministic)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, *, deterministic: bool = True,
                **tokenizer_extras):
        """The reference's seq2seq call: {"logits" [B, T, V], "encoder_last_hidden_state" [B, S, D]}."""
        _no_model_inputs(tokenizer_extras)
        if decoder_input_ids is None:
            raise ValueError("Transformer.forward needs decoder_input_ids (the shifted target, [B, T])")
        seg = _segments(input_ids, attention_mask)
        encoded = self.encode(input_ids, src_segment_ids=seg, deterministic=deterministic)
        logits = self.decode(encoded, input_ids, decoder_input_ids, src_segment_ids=seg, deterministic=deterministic)
        return {"logits": logits, "encoder_last_hidden_state": encoded}


def _masked_mean(x, segment_ids):
    """Mean over non-padding positions: [B, S, D], [B, S] -> [B, D]."""
    w = (segment_ids != 0).astype(x.dtype)[..., None]
    return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class EncoderClassifier(nn.Module):
    """Encoder-only sequence classifier: pooled encoder output (the mean over tokens, or the first
    token as in BERT) -> pooler (tanh; DistilBERT relu) -> class logits (float32). One class is
    regression."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, inputs, *, segment_ids=None, positions=None, token_types=None,
                 deterministic: bool = True):
        cfg = self.cfg
        seg, pos = _segments_and_positions(inputs, segment_ids, positions, cfg.pad_id)
        x = Encoder(cfg, name="encoder")(inputs, seg, pos, deterministic, token_types)
        pooled = x[:, 0] if cfg.pooling == "cls" else _masked_mean(x, seg)  # [B D]
        h = Dropout(cfg.dropout_rate)(_pool(cfg, pooled), deterministic=deterministic)
        logits = dense(cfg.num_classes, ("mlp", "classes"), cfg.compute_dtype, cfg.params_dtype, "classifier")(h)
        return logits.astype(jnp.float32)  # [B C]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True,
                **tokenizer_extras):
        _no_model_inputs(tokenizer_extras)
        return {"logits": self(input_ids, segment_ids=_segments(input_ids, attention_mask),
                               token_types=token_type_ids, deterministic=deterministic)}


class TokenClassifier(nn.Module):
    """Encoder-only per-token classifier (NER, tagging): encoder -> dropout -> dense, logits
    [B, S, C] float32."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, inputs, *, segment_ids=None, positions=None, token_types=None,
                 deterministic: bool = True):
        cfg = self.cfg
        x = Encoder(cfg, name="encoder")(inputs, segment_ids, positions, deterministic, token_types)
        x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        logits = dense(cfg.num_classes, ("embed", "classes"), cfg.compute_dtype, cfg.params_dtype, "classifier")(x)
        return logits.astype(jnp.float32)  # [B S C]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True,
                **tokenizer_extras):
        _no_model_inputs(tokenizer_extras)
        return {"logits": self(input_ids, segment_ids=_segments(input_ids, attention_mask),
                               token_types=token_type_ids, deterministic=deterministic)}


class QuestionAnswering(nn.Module):
    """Encoder-only extractive QA: encoder -> dropout -> dense to 2, split into the start and end
    logits of the answer span, each [B, S] float32."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, inputs, *, segment_ids=None, positions=None, token_types=None,
                 deterministic: bool = True):
        cfg = self.cfg
        x = Encoder(cfg, name="encoder")(inputs, segment_ids, positions, deterministic, token_types)
        x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        logits = dense(2, ("embed", "classes"), cfg.compute_dtype, cfg.params_dtype, "qa_outputs")(x)
        logits = logits.astype(jnp.float32)  # [B S 2]
        return logits[..., 0], logits[..., 1]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True,
                **tokenizer_extras):
        _no_model_inputs(tokenizer_extras)
        start, end = self(input_ids, segment_ids=_segments(input_ids, attention_mask),
                          token_types=token_type_ids, deterministic=deterministic)
        return {"start_logits": start, "end_logits": end}


class MaskedLM(nn.Module):
    """Encoder-only masked language model: BERT's MLM head (dense, activation, norm) on the encoder,
    then the (tied) output logits. With factorised embeddings (ALBERT) the head projects to E."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, inputs, *, segment_ids=None, positions=None, token_types=None,
                 deterministic: bool = True):
        cfg = self.cfg
        embed = _embed(cfg, "embedding")
        x = Encoder(cfg, embed, name="encoder")(inputs, segment_ids, positions, deterministic, token_types)
        x = activation_fn(cfg.activation)(
            dense(cfg.resolved_embed_dim, ("embed", "mlp"), cfg.compute_dtype, cfg.params_dtype, "transform")(x))
        x = _norm(cfg, "transform_norm")(x)
        return _output_logits(self, cfg, embed, x)  # [B S V]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True,
                **tokenizer_extras):
        _no_model_inputs(tokenizer_extras)
        return {"logits": self(input_ids, segment_ids=_segments(input_ids, attention_mask),
                               token_types=token_type_ids, deterministic=deterministic)}


class DecoderLM(nn.Module):
    """Decoder-only (GPT-style) language model: `logits[:, t]` predicts `inputs[:, t + 1]`."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, inputs, *, segment_ids=None, positions=None, deterministic: bool = True,
                 decode: bool | str = False, logits_at=None):
        return Decoder(self.cfg, _embed(self.cfg, "embedding"), cross=False, name="decoder")(
            inputs, segment_ids, positions, deterministic=deterministic, decode=decode, logits_at=logits_at)

    def forward(self, input_ids, attention_mask=None, *, deterministic: bool = True, **tokenizer_extras):
        _no_model_inputs(tokenizer_extras)
        return {"logits": self(input_ids, segment_ids=None if attention_mask is None else
                               _segments(input_ids, attention_mask), deterministic=deterministic)}


def flops_per_token(cfg: TransformerConfig, src_len: int, tgt_len: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) per target token of an encoder-decoder step.

    Counts every matrix multiply (2 FLOPs per multiply-add) with attention scores over the keys each
    spec really visits (`spec.keys_per_query`), as in PaLM's MFU accounting (Chowdhery et al.
    2022, appendix B).
    """
    d, f, a = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.resolved_head_dim
    kv = cfg.resolved_kv_heads * cfg.resolved_head_dim
    mlp = 2 * d * f * (3 if cfg.activation in GATED else 2)
    proj = 2 * 2 * d * (a + kv)  # q and output projections, k and v (fewer heads with GQA)
    enc = sum(proj + mlp + 4 * a * s.keys_per_query(src_len, False)
              for s in cfg.encoder_specs) * src_len
    dec = sum(proj + mlp + 4 * a * s.keys_per_query(tgt_len, True)
              for s in cfg.decoder_specs) * tgt_len
    cross = sum(2 * 2 * d * a * tgt_len + 2 * 2 * d * kv * src_len + 4 * a * s.keys_per_query(src_len, False) * tgt_len
                for s in cfg.cross_specs) if cfg.num_encoder_layers else 0
    logits = 2 * d * cfg.vocab_size * tgt_len
    # an MoE layer's token runs the float32 router and k experts' MLPs instead of one (active FLOPs;
    # the one-hot dispatch/combine einsums and empty capacity slots are overhead, not counted)
    moe = 2 * d * cfg.num_experts + (cfg.moe_top_k - 1) * mlp
    enc += moe * sum(cfg.encoder_moe) * src_len
    dec += moe * sum(cfg.decoder_moe) * tgt_len
    return 3.0 * (enc + dec + cross + logits) / tgt_len


def param_count(params) -> int:
    import jax

    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
