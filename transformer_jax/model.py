"""Transformer models built from one set of blocks (Vaswani et al. 2017).

- `Transformer`: encoder-decoder; `encode` and `decode` run the two halves apart.
- `EncoderClassifier` and `MaskedLM`: encoder-only (BERT-style) with a classification or MLM head.
- `DecoderLM`: decoder-only (GPT-style) language model.

Alphabet: B batch, S source length, T target length, D model dim, V vocab.
Padding is token 0; packed sequences come with segment ids (0 = padding) and per-segment positions.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from transformer_jax.attention.masks import segment_ids_from_tokens
from transformer_jax.attention.module import MultiHeadAttention, keys_per_query
from transformer_jax.config import TransformerConfig
from transformer_jax.layers import (MLP, Embed, LearnedPositions, dense, norm,
                                    positions_from_segments, sinusoidal)


def _segments_and_positions(tokens, segment_ids, positions):
    """Fill in unpacked defaults: segment 1 for real tokens, 0 for padding; positions 0..T-1."""
    if segment_ids is None:
        segment_ids = segment_ids_from_tokens(tokens)
    if positions is None:
        positions = positions_from_segments(segment_ids)
    return segment_ids, positions


class Residual(nn.Module):
    """Post-LN `norm(x + dropout(f(x)))` (the paper) or pre-LN `x + dropout(f(norm(x)))`."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x, sublayer, deterministic: bool):
        cfg = self.cfg
        layer_norm = norm(cfg.norm, cfg.compute_dtype, cfg.params_dtype, "norm")
        if cfg.norm_position == "pre":
            y = sublayer(layer_norm(x))
            return x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        y = sublayer(x)
        return layer_norm(x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic))


def _attention(cfg: TransformerConfig, spec, causal: bool, rotary: bool, name: str, cross: bool = False):
    return MultiHeadAttention(
        num_heads=cfg.num_heads, head_dim=cfg.resolved_head_dim, spec=spec, causal=causal, cross=cross,
        rotary_base=cfg.rotary_base if rotary else None, cache_len=cfg.max_len,
        dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, name=name)


def _mlp(cfg: TransformerConfig):
    return MLP(cfg.d_ff, cfg.activation, cfg.compute_dtype, cfg.params_dtype, name="mlp")


class EncoderBlock(nn.Module):
    """Self-attention then feed-forward, each in a residual."""

    cfg: TransformerConfig
    spec: object

    @nn.compact
    def __call__(self, x, segment_ids, positions, deterministic: bool = True):
        cfg = self.cfg
        attn = _attention(cfg, self.spec, False, cfg.position == "rotary", "self_attention")
        x = Residual(cfg, name="attention_block")(
            x, lambda h: attn(h, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                              q_positions=positions), deterministic)
        x = Residual(cfg, name="mlp_block")(x, _mlp(cfg), deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderBlock(nn.Module):
    """Causal self-attention, optional cross-attention to the encoder, then feed-forward."""

    cfg: TransformerConfig
    spec: object
    cross_spec: object | None  # None: decoder-only, no cross-attention

    @nn.compact
    def __call__(self, x, segment_ids, positions, encoded=None, src_segment_ids=None,
                 deterministic: bool = True, decode: bool = False):
        cfg = self.cfg
        attn = _attention(cfg, self.spec, True, cfg.position == "rotary", "self_attention")
        x = Residual(cfg, name="attention_block")(
            x, lambda h: attn(h, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                              q_positions=positions, decode=decode), deterministic)
        if self.cross_spec is not None:
            cross = _attention(cfg, self.cross_spec, False, False, "cross_attention", cross=True)
            x = Residual(cfg, name="cross_block")(
                x, lambda h: cross(h, encoded, q_segment_ids=segment_ids,
                                   kv_segment_ids=src_segment_ids, decode=decode), deterministic)
        x = Residual(cfg, name="mlp_block")(x, _mlp(cfg), deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Embedder(nn.Module):
    """Tokens -> embeddings plus additive positions (none for rotary), then dropout."""

    cfg: TransformerConfig
    embed: Embed

    @nn.compact
    def __call__(self, tokens, positions, deterministic: bool):
        cfg = self.cfg
        x = self.embed(tokens)  # [B T D]
        if cfg.position == "sinusoidal":
            x = x + sinusoidal(positions, cfg.d_model, cfg.compute_dtype)
        elif cfg.position == "learned":
            x = x + LearnedPositions(cfg.max_len, cfg.d_model, cfg.compute_dtype, cfg.params_dtype,
                                     name="positions")(positions)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _final_norm(cfg: TransformerConfig, x):
    """Pre-LN stacks end with a norm; post-LN stacks are already normalised."""
    if cfg.norm_position == "pre":
        return norm(cfg.norm, cfg.compute_dtype, cfg.params_dtype, "final_norm")(x)
    return x


class Encoder(nn.Module):
    cfg: TransformerConfig
    embed: Embed

    @nn.compact
    def __call__(self, tokens, segment_ids, positions, deterministic: bool = True):
        """[B, S] tokens -> [B, S, D]."""
        x = Embedder(self.cfg, self.embed, name="embedder")(tokens, positions, deterministic)
        for i, spec in enumerate(self.cfg.layer_specs("encoder_attention")):
            x = EncoderBlock(self.cfg, spec, name=f"layer_{i}")(x, segment_ids, positions, deterministic)
        return _final_norm(self.cfg, x)


class Decoder(nn.Module):
    """The decoder stack. `cross=False` makes it a decoder-only language model."""

    cfg: TransformerConfig
    embed: Embed
    cross: bool = True

    @nn.compact
    def __call__(self, tokens, segment_ids, positions, encoded=None, src_segment_ids=None,
                 deterministic: bool = True, decode: bool = False):
        """[B, T] tokens -> [B, T, V] float32 logits; `decode=True` runs one cached step."""
        cfg = self.cfg
        if decode:  # the position is the number of steps already taken
            index = self.variable("cache", "decode_index", lambda: jnp.array(0, jnp.int32))
            positions = jnp.broadcast_to(index.value, tokens.shape)
            index.value = index.value + 1
        x = Embedder(cfg, self.embed, name="embedder")(tokens, positions, deterministic)
        cross_specs = cfg.layer_specs("cross_attention") if self.cross else (None,) * cfg.num_decoder_layers
        for i, (spec, cross_spec) in enumerate(zip(cfg.layer_specs("decoder_attention"), cross_specs)):
            x = DecoderBlock(cfg, spec, cross_spec, name=f"layer_{i}")(
                x, segment_ids, positions, encoded, src_segment_ids, deterministic, decode)
        x = _final_norm(cfg, x)
        if cfg.tie_output:
            logits = self.embed.attend(x)
        else:
            logits = dense(cfg.vocab_size, ("embed", "vocab"), cfg.compute_dtype, cfg.params_dtype,
                           "logits")(x)
        logits = logits.astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def _embed(cfg: TransformerConfig, name: str | None = None) -> Embed:
    return Embed(cfg.vocab_size, cfg.d_model, cfg.compute_dtype, cfg.params_dtype, name=name)


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
        seg, pos = _segments_and_positions(src, src_segment_ids, src_positions)
        return self.encoder(src, seg, pos, deterministic)

    def decode(self, encoded, src, tgt_in, *, src_segment_ids=None, tgt_segment_ids=None,
               tgt_positions=None, deterministic: bool = True, decode: bool = False):
        """encoded [B, S, D], src [B, S] (for its padding), tgt_in [B, T] -> logits [B, T, V] float32."""
        src_seg = segment_ids_from_tokens(src) if src_segment_ids is None else src_segment_ids
        if decode:
            tgt_seg, tgt_pos = jnp.ones_like(tgt_in, jnp.int32), None
        else:
            tgt_seg, tgt_pos = _segments_and_positions(tgt_in, tgt_segment_ids, tgt_positions)
        return self.decoder(tgt_in, tgt_seg, tgt_pos, encoded, src_seg, deterministic, decode)

    def __call__(self, src, tgt_in, *, src_segment_ids=None, src_positions=None, tgt_segment_ids=None,
                 tgt_positions=None, deterministic: bool = True):
        encoded = self.encode(src, src_segment_ids=src_segment_ids, src_positions=src_positions,
                              deterministic=deterministic)
        return self.decode(encoded, src, tgt_in, src_segment_ids=src_segment_ids,
                           tgt_segment_ids=tgt_segment_ids, tgt_positions=tgt_positions,
                           deterministic=deterministic)


def _masked_mean(x, segment_ids):
    """Mean over non-padding positions: [B, S, D], [B, S] -> [B, D]."""
    w = (segment_ids != 0).astype(x.dtype)[..., None]
    return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class EncoderClassifier(nn.Module):
    """Encoder-only sequence classifier: mean-pooled encoder output -> class logits (float32)."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, inputs, *, segment_ids=None, positions=None, deterministic: bool = True):
        cfg = self.cfg
        seg, pos = _segments_and_positions(inputs, segment_ids, positions)
        x = Encoder(cfg, _embed(cfg, "embedding"), name="encoder")(inputs, seg, pos, deterministic)
        pooled = _masked_mean(x, seg)  # [B D]
        h = nn.tanh(dense(cfg.d_model, ("embed", "mlp"), cfg.compute_dtype, cfg.params_dtype, "pooler")(pooled))
        logits = dense(cfg.num_classes, ("mlp", "classes"), cfg.compute_dtype, cfg.params_dtype, "classifier")(h)
        return logits.astype(jnp.float32)  # [B C]


class MaskedLM(nn.Module):
    """Encoder-only masked language model (BERT's MLM head, tied to the input embedding)."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, inputs, *, segment_ids=None, positions=None, deterministic: bool = True):
        cfg = self.cfg
        seg, pos = _segments_and_positions(inputs, segment_ids, positions)
        embed = _embed(cfg, "embedding")
        x = Encoder(cfg, embed, name="encoder")(inputs, seg, pos, deterministic)
        x = nn.gelu(dense(cfg.d_model, ("embed", "mlp"), cfg.compute_dtype, cfg.params_dtype, "transform")(x))
        x = norm(cfg.norm, cfg.compute_dtype, cfg.params_dtype, "transform_norm")(x)
        return embed.attend(x).astype(jnp.float32)  # [B S V]


class DecoderLM(nn.Module):
    """Decoder-only (GPT-style) language model: `logits[:, t]` predicts `inputs[:, t + 1]`."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, inputs, *, segment_ids=None, positions=None, deterministic: bool = True,
                 decode: bool = False):
        cfg = self.cfg
        seg, pos = _segments_and_positions(inputs, segment_ids, positions)
        return Decoder(cfg, _embed(cfg, "embedding"), cross=False, name="decoder")(
            inputs, seg, pos, deterministic=deterministic, decode=decode)


def flops_per_token(cfg: TransformerConfig, src_len: int, tgt_len: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) per target token of an encoder-decoder step.

    Counts every matrix multiply (2 FLOPs per multiply-add) with attention scores over the keys each
    spec really visits, as in PaLM's MFU accounting (Chowdhery et al. 2022, appendix B).
    """
    d, f, a = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.resolved_head_dim
    mlp = 2 * d * f * (3 if cfg.activation in ("swiglu", "geglu") else 2)
    proj = 2 * 4 * d * a  # q, k, v and output projections
    enc = sum(proj + mlp + 4 * a * keys_per_query(s, src_len, False)
              for s in cfg.layer_specs("encoder_attention")) * src_len
    dec = sum(proj + mlp + 4 * a * keys_per_query(s, tgt_len, True)
              for s in cfg.layer_specs("decoder_attention")) * tgt_len
    cross = sum(2 * 2 * d * a * tgt_len + 2 * 2 * d * a * src_len + 4 * a * keys_per_query(s, src_len, False) * tgt_len
                for s in cfg.layer_specs("cross_attention")) if cfg.num_encoder_layers else 0
    logits = 2 * d * cfg.vocab_size * tgt_len
    return 3.0 * (enc + dec + cross + logits) / tgt_len


def param_count(params) -> int:
    import jax

    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
