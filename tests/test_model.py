"""The models against references: cached decoding, padding, causality, packing, float64 NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax.attention.module import MultiHeadAttention
from transformer_jax.model import EncoderBlock

VOCAB = 64


def tokens(key, shape, low=3):
    return jax.random.randint(jax.random.key(key), shape, low, VOCAB).astype(jnp.int32)


def init(cfg, src, tgt_in, seed=0):
    model = tj.Transformer(cfg)
    return model, model.init(jax.random.key(seed), src, tgt_in)


def step_by_step_logits(model, variables, src, tgt_in):
    """Feed tgt_in one token at a time through the KV cache; returns [B, T, V]."""
    encoded = model.apply(variables, src, method=tj.Transformer.encode)
    cache, outs = None, []
    for t in range(tgt_in.shape[1]):
        v = variables if cache is None else {**variables, "cache": cache}
        logits, state = model.apply(v, encoded if cache is None else None, src, tgt_in[:, t:t + 1],
                                    decode=True, mutable=["cache"], method=tj.Transformer.decode)
        cache = state["cache"]
        outs.append(logits)
    return jnp.concatenate(outs, axis=1)


VARIANTS = {
    "paper": {},
    "pre_rms_rotary_swiglu": dict(norm="rmsnorm", norm_position="pre", position="rotary", activation="swiglu"),
    "learned_gelu_untied": dict(position="learned", activation="gelu", tie_output=False, share_embeddings=False),
    "windowed_decoder": dict(decoder_attention=tj.attention.Windowed(2), position="rotary",
                             encoder_attention=tj.attention.BlockSparse(4, 3, 1, 1)),
    "sparse_decoder": dict(decoder_attention=tj.attention.BlockSparse(2, 3, 1, 1, seed=3)),
    "per_layer_specs": dict(decoder_attention=(tj.attention.Windowed(1), tj.attention.Flash(block_size=4)),
                            cross_attention=tj.attention.Flash(block_size=4)),
    "t5_relative_bias": dict(position="relative", relative_buckets=8, relative_max_distance=16,
                             attention_scale=1.0, use_bias=False, norm="rmsnorm", norm_position="pre",
                             activation="geglu_tanh", tie_output=True, logits_scale=32 ** -0.5),
    "gqa_bart_style": dict(num_kv_heads=2, position="learned", position_offset=2, embed_norm=True,
                           embed_scale=False, logits_bias=True, activation="gelu", pad_id=1),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_decoding_matches_teacher_forcing(variant):
    cfg = tj.tiny(**VARIANTS[variant])
    src = tokens(1, (2, 9)).at[1, 6:].set(0)
    tgt_in = tokens(2, (2, 7)).at[:, 0].set(tj.config.BOS_ID)
    model, variables = init(cfg, src, tgt_in)
    full = model.apply(variables, src, tgt_in)
    cached = step_by_step_logits(model, variables, src, tgt_in)
    assert full.dtype == jnp.float32 and full.shape == (2, 7, VOCAB)
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)


def test_windowed_decode_cache_holds_only_the_window():
    cfg = tj.tiny(decoder_attention=tj.attention.Windowed(3), max_len=64)
    src, tgt_in = tokens(1, (2, 5)), tokens(2, (2, 1))
    model, variables = init(cfg, src, tgt_in)
    encoded = model.apply(variables, src, method=tj.Transformer.encode)
    _, state = model.apply(variables, encoded, src, tgt_in, decode=True, mutable=["cache"],
                           method=tj.Transformer.decode)
    cached = state["cache"]["decoder"]["layer_0"]["self_attention"]["cached_key"]
    assert cached.shape == (2, cfg.num_heads, 4, cfg.resolved_head_dim)  # [B K L H]: window + 1, not max_len


def test_padding_does_not_change_outputs():
    cfg = tj.tiny()
    src, tgt_in = tokens(3, (2, 6)), tokens(4, (2, 5))
    model, variables = init(cfg, src, tgt_in)
    ref = model.apply(variables, src, tgt_in)
    padded_src = jnp.pad(src, ((0, 0), (0, 5)))
    padded_tgt = jnp.pad(tgt_in, ((0, 0), (0, 3)))
    out = model.apply(variables, padded_src, padded_tgt)
    np.testing.assert_allclose(out[:, :5], ref, atol=1e-6, rtol=1e-6)


def test_decoder_is_causal():
    cfg = tj.tiny()
    src, tgt_in = tokens(5, (1, 6)), tokens(6, (1, 8))
    model, variables = init(cfg, src, tgt_in)

    def logits_at(t, tgt):
        return model.apply(variables, src, tgt)[0, t]

    for t in (0, 3, 6):
        changed = tgt_in.at[0, t + 1:].set(tokens(7, (8 - t - 1,)))
        np.testing.assert_array_equal(logits_at(t, tgt_in), logits_at(t, changed))
        assert not np.allclose(logits_at(t + 1, tgt_in), logits_at(t + 1, changed))  # t + 1 does see it


def test_packed_equals_separate():
    cfg = tj.tiny(position="rotary", norm_position="pre")
    src_a, src_b = tokens(8, (1, 5)), tokens(9, (1, 4))
    tgt_a, tgt_b = tokens(10, (1, 4)), tokens(11, (1, 6))
    model, variables = init(cfg, src_a, tgt_a)
    sep_a = model.apply(variables, src_a, tgt_a)
    sep_b = model.apply(variables, src_b, tgt_b)
    src = jnp.concatenate([src_a, src_b, jnp.zeros((1, 2), jnp.int32)], 1)
    tgt = jnp.concatenate([tgt_a, tgt_b, jnp.zeros((1, 1), jnp.int32)], 1)
    seg = lambda a, b, pad: jnp.array([[1] * a + [2] * b + [0] * pad])  # noqa: E731
    pos = lambda a, b, pad: jnp.array([list(range(a)) + list(range(b)) + [0] * pad])  # noqa: E731
    packed = model.apply(variables, src, tgt, src_segment_ids=seg(5, 4, 2), src_positions=pos(5, 4, 2),
                         tgt_segment_ids=seg(4, 6, 1), tgt_positions=pos(4, 6, 1))
    np.testing.assert_allclose(packed[:, :4], sep_a, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(packed[:, 4:10], sep_b, atol=1e-5, rtol=1e-5)


# ---- float64 NumPy references -------------------------------------------------------------

def np_attention(x, kv, p, mask):
    """Multi-head attention in float64 from the module's parameters."""
    q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bsd,dnh->bsnh", kv, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bsd,dnh->bsnh", kv, p["value"]["kernel"]) + p["value"]["bias"]
    s = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    m = s.max(-1, keepdims=True)
    w = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)  # rows that see nothing give zeros
    o = np.einsum("bnts,bsnh->btnh", w, v)
    return np.einsum("btnh,nhd->btd", o, p["out"]["kernel"]) + p["out"]["bias"]


def np_layernorm(x, p, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def to64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), nn_unbox(tree))


def nn_unbox(tree):
    import flax.linen as nn
    return nn.meta.unbox(tree)


def test_cross_attention_matches_float64_reference():
    mha = MultiHeadAttention(num_heads=4, head_dim=8, cross=True)
    x = jax.random.normal(jax.random.key(0), (2, 5, 32))
    kv = jax.random.normal(jax.random.key(1), (2, 7, 32))
    kv_seg = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
    variables = mha.init(jax.random.key(2), x, kv, kv_segment_ids=kv_seg)
    out = mha.apply(variables, x, kv, kv_segment_ids=kv_seg)
    mask = np.asarray(kv_seg != 0)[:, None, None, :]
    ref = np_attention(np.float64(x), np.float64(kv), to64(variables["params"]), mask)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_encoder_block_matches_float64_reference():
    cfg = tj.tiny()
    x = jax.random.normal(jax.random.key(3), (2, 6, cfg.d_model))
    seg = jnp.array([[1] * 6, [1] * 3 + [0] * 3])
    pos = jnp.tile(jnp.arange(6), (2, 1))
    block = EncoderBlock(cfg, tj.attention.Dense())
    variables = block.init(jax.random.key(4), x, seg, pos)
    out = block.apply(variables, x, seg, pos)
    p, x64, s = to64(variables["params"]), np.float64(x), np.asarray(seg)
    mask = ((s[:, :, None] == s[:, None, :]) & (s != 0)[:, None, :])[:, None]
    h = np_layernorm(x64 + np_attention(x64, x64, p["self_attention"], mask), p["attention_block"]["norm"])
    mlp = p["mlp"]
    f = np.maximum(h @ mlp["wi"]["kernel"] + mlp["wi"]["bias"], 0) @ mlp["wo"]["kernel"] + mlp["wo"]["bias"]
    ref = np_layernorm(h + f, p["mlp_block"]["norm"])
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


# ---- decoding ----------------------------------------------------------------------------

def test_beam_of_one_is_greedy_and_beams_never_score_below_greedy():
    cfg = tj.tiny(max_len=16)
    src = tokens(12, (4, 7)).at[2, 4:].set(0)
    model, variables = init(cfg, src, src[:, :3])
    greedy = tj.generate(model, variables, src, max_len=12)
    beam1 = tj.generate(model, variables, src, max_len=12, beam_size=1, length_penalty=0.0)
    np.testing.assert_array_equal(beam1, greedy)
    assert greedy.dtype == jnp.int32 and greedy.shape == (4, 12)
    greedy_lp = tj.sequence_logprob(model, variables, src, greedy)
    for k in (2, 4):
        beam = tj.generate(model, variables, src, max_len=12, beam_size=k, length_penalty=0.0)
        beam_lp = tj.sequence_logprob(model, variables, src, beam)
        assert np.all(np.asarray(beam_lp) >= np.asarray(greedy_lp) - 1e-4), (k, beam_lp, greedy_lp)


def test_sampling_respects_top_k_and_is_seeded():
    cfg = tj.tiny(max_len=16)
    src = tokens(13, (3, 5))
    model, variables = init(cfg, src, src)
    a = tj.generate(model, variables, src, max_len=10, temperature=1.0, top_k=1, rng=jax.random.key(0))
    np.testing.assert_array_equal(a, tj.generate(model, variables, src, max_len=10))  # top-1 is greedy
    s1 = tj.generate(model, variables, src, max_len=10, temperature=1.5, top_p=0.9, rng=jax.random.key(1))
    s2 = tj.generate(model, variables, src, max_len=10, temperature=1.5, top_p=0.9, rng=jax.random.key(1))
    np.testing.assert_array_equal(s1, s2)


def test_filter_logits_top_p_keeps_smallest_prefix():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    out = tj.decode.filter_logits(logits, 1.0, 0, 0.75)
    assert np.isfinite(out).all() and (np.asarray(out[0]) > -1e8).tolist() == [True, True, False, False]


# ---- sizes, configs, plain-JAX use -------------------------------------------------------

def closed_form_params(cfg):
    d, f, v, a = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_heads * cfg.resolved_head_dim
    attn = 4 * d * a + 3 * a + d
    mlp = d * f + f + f * d + d
    ln = 2 * d
    enc = cfg.num_encoder_layers * (attn + mlp + 2 * ln)
    dec = cfg.num_decoder_layers * (2 * attn + mlp + 3 * ln)
    return v * d + enc + dec


@pytest.mark.parametrize("cfg", [tj.tiny(), tj.tiny(d_model=48, num_heads=6, d_ff=80, num_encoder_layers=3)])
def test_param_count_matches_closed_form(cfg):
    src = tokens(0, (1, 4))
    _, variables = init(cfg, src, src)
    assert tj.param_count(variables["params"]) == closed_form_params(cfg)


def test_base_preset_size_matches_paper():
    shapes = jax.eval_shape(lambda: tj.Transformer(tj.base()).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)))
    n = tj.param_count(shapes["params"])
    assert n == closed_form_params(tj.base())
    assert 60e6 < n < 66e6  # Table 3 reports 65M for a 37k shared vocabulary


@pytest.mark.parametrize("field,value,needle", [
    ("num_heads", 5, "num_heads"), ("d_model", 0, "d_model"), ("activation", "tanh", "activation"),
    ("norm", "batchnorm", "layernorm, rmsnorm"), ("position", "alibi", "position"),
    ("dropout_rate", 1.5, "dropout_rate"), ("encoder_attention", "dense", "encoder_attention"),
    ("encoder_attention", (tj.attention.Dense(),), "encoder_attention"),
])
def test_bad_config_names_the_field(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        tj.tiny(**{field: value})


def test_plain_jax_jit_and_grad():
    cfg = tj.tiny(dtype="bfloat16")
    src, tgt_in, tgt_out = tokens(20, (2, 6)), tokens(21, (2, 5)), tokens(22, (2, 5))
    model, variables = init(cfg, src, tgt_in)

    @jax.jit
    def loss_fn(params):
        logits = model.apply({"params": params}, src, tgt_in)
        assert logits.dtype == jnp.float32
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tgt_out[..., None], -1))

    loss, grads = jax.value_and_grad(loss_fn)(variables["params"])
    assert np.isfinite(loss) and abs(float(loss) - math.log(VOCAB)) < 1.0
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    assert jax.tree_util.tree_leaves(variables["params"])[0].dtype == jnp.float32


def test_flops_per_token_counts_matmuls():
    cfg = tj.base()
    n_matmul = tj.param_count(jax.eval_shape(lambda: tj.Transformer(cfg).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)))["params"])
    flops = tj.flops_per_token(cfg, 128, 128)
    # at short lengths attention is small: close to 6 x (non-embedding params + output projection)
    assert 6 * (n_matmul - cfg.vocab_size * cfg.d_model) < flops < 6 * n_matmul * 1.3
