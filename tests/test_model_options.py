"""Architecture options and the edges of the model API: grouped-query attention, relative
positions, silent-wrong-answer guards, and blocks used on their own."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax.attention import BlockSparse, Dense, Flash, Windowed
from transformer_jax.layers import relative_position_bucket

VOCAB = 64


def tokens(key, shape, low=3):
    return jax.random.randint(jax.random.key(key), shape, low, VOCAB).astype(jnp.int32)


def test_gqa_shares_kv_heads_and_sizes_the_cache():
    """num_kv_heads=2 of 4: each K/V head serves two query heads, equal to full MHA with the K/V
    kernels repeated; the decode cache holds 2 heads."""
    cfg = tj.tiny(num_kv_heads=2)
    x = jax.random.normal(jax.random.key(0), (2, 7, cfg.d_model))
    gqa = tj.MultiHeadAttention(num_heads=4, head_dim=8, num_kv_heads=2, causal=True, cache_len=16)
    params = nn.unbox(gqa.init(jax.random.key(1), x)["params"])
    mha = tj.MultiHeadAttention(num_heads=4, head_dim=8, causal=True)
    repeated = {**params, "key": {"kernel": jnp.repeat(params["key"]["kernel"], 2, axis=1),
                                  "bias": jnp.repeat(params["key"]["bias"], 2, axis=0)},
                "value": {"kernel": jnp.repeat(params["value"]["kernel"], 2, axis=1),
                          "bias": jnp.repeat(params["value"]["bias"], 2, axis=0)}}
    np.testing.assert_allclose(gqa.apply({"params": params}, x), mha.apply({"params": repeated}, x),
                               atol=1e-6, rtol=1e-6)
    model = tj.DecoderLM(cfg)
    cache = tj.init_cache(model, 2)
    assert cache["decoder"]["layer_0"]["self_attention"]["cached_key"].shape == (2, 2, cfg.max_len, 8)  # [B K L H]


def np_bucket(rel, bidirectional, num_buckets, max_distance):
    """T5's bucketing in float64 NumPy, written from the paper's description."""
    out = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0) * num_buckets
        n = np.abs(rel)
    else:
        n = -np.minimum(rel, 0)
    exact = num_buckets // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        large = exact + (np.log(n / exact) / np.log(max_distance / exact) * (num_buckets - exact)).astype(np.int64)
    return out + np.where(n < exact, n, np.minimum(large, num_buckets - 1))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets(bidirectional):
    rel = np.arange(-300, 300)
    ours = relative_position_bucket(jnp.asarray(rel), bidirectional, 32, 128)
    np.testing.assert_array_equal(np.asarray(ours), np_bucket(rel, bidirectional, 32, 128))


# ---- silent wrong answers become errors ---------------------------------------------------------

def test_source_longer_than_learned_positions_is_an_error():
    cfg = tj.tiny(position="learned", max_len=8)
    model = tj.Transformer(cfg)
    variables = model.init(jax.random.key(0), tokens(0, (1, 8)), tokens(1, (1, 8)))
    with pytest.raises(ValueError, match="sequence length 9 exceeds TransformerConfig.max_len=8"):
        model.apply(variables, tokens(2, (1, 9)), tokens(3, (1, 4)))


def test_token_out_of_vocabulary():
    cfg = tj.tiny()
    model = tj.EncoderClassifier(cfg)
    good = tokens(0, (2, 6))
    variables = model.init(jax.random.key(0), good)
    bad = good.at[1, 2].set(VOCAB)
    with pytest.raises(ValueError, match=f"id {VOCAB}, outside the vocabulary \\[0, {VOCAB}\\)"):
        model.apply(variables, bad)
    # under jit the ids are unknown while tracing: the row's logits are NaN, never another row's
    out = jax.jit(model.apply)(variables, bad)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


def test_decoding_past_the_cache_poisons_instead_of_clamping():
    cfg = tj.tiny(max_len=4)
    model = tj.DecoderLM(cfg)
    variables = model.init(jax.random.key(0), tokens(0, (1, 4)))
    cache = tj.init_cache(model, 1)
    outs = []
    for t in range(5):
        logits, state = model.apply({**variables, "cache": cache}, tokens(t, (1, 1)), decode=True,
                                    mutable=["cache"])
        cache = state["cache"]
        outs.append(logits)
    assert all(np.isfinite(o).all() for o in outs[:4]) and np.isnan(outs[4]).all()
    with pytest.raises(ValueError, match="max_len is 4"):
        tj.generate(model, variables, tokens(0, (1, 3)), max_new_tokens=3)


@pytest.mark.parametrize("spec", [Windowed(4), BlockSparse(4, 3, 1, 1)])
def test_cross_attention_accepts_only_full_specs(spec):
    with pytest.raises(ValueError, match="cross_attention=.*use Dense\\(\\) or Flash\\(\\)"):
        tj.tiny(cross_attention=spec)
    tj.tiny(cross_attention=Flash(block_size=4))


def test_relative_positions_need_dense():
    with pytest.raises(ValueError, match="encoder_attention=Windowed.*relative"):
        tj.tiny(position="relative", encoder_attention=Windowed(4))


# ---- config values ------------------------------------------------------------------------------

def test_config_accepts_numpy_scalars_and_dtype_objects():
    cfg = tj.tiny(d_model=np.int64(32), num_heads=np.int32(4), dtype=jnp.bfloat16, param_dtype=np.dtype("float32"),
                  dropout_rate=np.float32(0.0))
    assert (cfg.d_model, cfg.dtype, cfg.param_dtype) == (32, "bfloat16", "float32")
    assert type(cfg.d_model) is int


def test_config_rejects_spec_classes():
    with pytest.raises(TypeError, match="encoder_attention needs an attention spec instance, e.g. Windowed"):
        tj.tiny(encoder_attention=Windowed)


@pytest.mark.parametrize("field, value, message", [
    ("num_kv_heads", 3, "num_kv_heads=3 must divide num_heads=4"),
    ("pad_id", 64, "pad_id=64 must be < vocab_size=64"),
    ("norm_eps", 0.0, "norm_eps must be a positive number"),
    ("position", "alibi", "position='alibi' is not one of"),
    ("activation", "gelu_new", "activation='gelu_new' is not one of"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        tj.tiny(**{field: value})


# ---- blocks used alone --------------------------------------------------------------------------

def test_blocks_and_encoder_work_alone():
    cfg = tj.tiny()
    x = jax.random.normal(jax.random.key(0), (2, 5, cfg.d_model))
    for block in (tj.EncoderBlock(cfg), tj.DecoderBlock(cfg), tj.MultiHeadAttention(num_heads=4, head_dim=8)):
        variables = block.init(jax.random.key(1), x)
        assert block.apply(variables, x).shape == x.shape
    encoder = tj.Encoder(cfg)
    ids = tokens(0, (2, 5))
    variables = encoder.init(jax.random.key(2), ids)
    assert encoder.apply(variables, ids).shape == (2, 5, cfg.d_model)
    assert "embedding" in variables["params"]
    # an encoder block with no segment ids equals one told that every token is real
    block = tj.EncoderBlock(cfg, Dense())
    v = block.init(jax.random.key(3), x)
    np.testing.assert_allclose(block.apply(v, x), block.apply(v, x, jnp.ones((2, 5), jnp.int32), jnp.arange(5)[None]),
                               atol=1e-6)


def test_decoder_inputs_are_never_padding():
    """T5 and Marian start the decoder with the pad id: it must be attended to like any token."""
    cfg = tj.tiny(pad_id=0)
    model = tj.Transformer(cfg)
    src, tgt = tokens(0, (1, 6)), tokens(1, (1, 5)).at[0, 0].set(0)
    variables = model.init(jax.random.key(0), src, tgt)
    full = model.apply(variables, src, tgt)
    changed = model.apply(variables, src, tgt.at[0, 0].set(5))
    assert not np.allclose(full[0, 1:], changed[0, 1:])  # later positions see the first token


@pytest.mark.parametrize("shape", [(64, 512), (3, 7, 30)])  # packed bytes, and a last axis not divisible by 4
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_dropout_keeps_its_rounded_share_and_the_expectation(shape, rate):
    from transformer_jax.layers import Dropout

    keep = round(256 * (1 - rate))
    x = jnp.ones(shape, jnp.float32)
    drop = lambda seed, **kw: Dropout(rate).apply({}, x, rngs={"dropout": jax.random.key(seed)}, **kw)  # noqa: E731
    y = np.asarray(drop(0, deterministic=False))
    kept = y != 0
    n = kept.size
    assert set(np.unique(y)) <= {0.0, np.float32(256 / keep)}
    assert abs(kept.mean() - keep / 256) < 5 * np.sqrt(keep / 256 * (1 - keep / 256) / n) + 1e-9
    assert abs(y.mean() - 1.0) < 5 * np.sqrt(rate / (1 - rate) / n) + 1e-9  # unbiased: E[y] = x
    assert (y == np.asarray(drop(0, deterministic=False))).all() and (y != np.asarray(drop(1, deterministic=False))).any()
    assert (np.asarray(drop(0, deterministic=True)) == 1).all()
    bf16 = Dropout(rate).apply({}, x.astype(jnp.bfloat16), deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert bf16.dtype == jnp.bfloat16
    # neighbouring elements come from different bytes of one word: no correlation between them
    if shape[-1] % 4 == 0:
        a, b = kept[:, 0::4].ravel(), kept[:, 1::4].ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
