"""`tj.attention_weights` and `attention.weights.probabilities` against independent references:
the reference library's `output_attentions` (fixtures made by tests/fixtures/attention/
make_reference.py), float64 NumPy softmax under each spec's materialised mask, the kernels' own
outputs (weights @ v must be what the spec computes), and Performer's explicit feature map."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax.attention import BlockSparse, Dense, Flash, Performer, Windowed
from transformer_jax.attention.weights import probabilities

FIXTURES = Path(__file__).parent / "fixtures"
PRETRAINED = FIXTURES / "pretrained"
B, T, N, H = 2, 24, 2, 8


def qkv(seed, t=T, s=T):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, t, N, H)), jax.random.normal(kk, (B, s, N, H)),
            jax.random.normal(kv, (B, s, N, H)))


PADDED = np.array([[1] * T, [1] * (T - 7) + [0] * 7], np.int32)  # row 1 ends in padding
PACKED = np.array([[1] * 10 + [2] * 9 + [0] * 5, [1] * 5 + [2] * 12 + [3] * 7], np.int32)


def reference_softmax(q, k, mask):
    """float64 softmax(q k^T / sqrt(H)) under a boolean [B, 1 or N, T, S] mask; empty rows are zeros."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -np.inf)
    top = s.max(-1, keepdims=True)
    e = np.where(mask, np.exp(s - np.where(np.isfinite(top), top, 0)), 0.0)
    total = e.sum(-1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def materialised_mask(spec, causal, seg):
    pattern = spec.mask(T, T, causal)[None, None]
    if seg is None:
        return np.broadcast_to(pattern, (B, 1, T, T))
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    return pattern & same[:, None]


BLOCKWISE = [Flash(block_size=8), Windowed(3), BlockSparse(block_size=4, window_blocks=3, global_blocks=1,
                                                             random_blocks=1, seed=3)]


@pytest.mark.parametrize("spec", [Dense(backend="xla")] + BLOCKWISE, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seg", [None, PADDED, PACKED], ids=["plain", "padded", "packed"])
def test_softmax_spec_weights_are_dense_under_the_mask(spec, causal, seg):
    q, k, v = qkv(1)
    segs = {} if seg is None else {"q_segment_ids": jnp.asarray(seg), "kv_segment_ids": jnp.asarray(seg)}
    w = np.asarray(probabilities(spec, q, k, causal=causal, **segs))
    mask = materialised_mask(spec, causal, seg)
    assert w.shape == (B, N, T, T) and w.dtype == np.float32
    assert not w[~np.broadcast_to(mask, w.shape)].any()  # exactly zero outside the pattern
    np.testing.assert_allclose(w, reference_softmax(q, k, mask), atol=2e-6)
    sees = np.broadcast_to(mask.any(-1), w.shape[:3])
    np.testing.assert_allclose(w.sum(-1)[sees], 1.0, atol=1e-5)
    assert not w.sum(-1)[~sees].any()
    # the weights are the ones the kernel applies
    out = np.asarray(spec(q, k, v, causal=causal, **segs))  # [B T N H]
    np.testing.assert_allclose(np.einsum("bnts,bsnh->btnh", w, np.asarray(v)), out, atol=2e-5)


def test_block_sparse_pattern_is_not_dense():
    """The BlockSparse case above is a real restriction: its mask leaves out most key blocks."""
    spec = BLOCKWISE[-1]
    assert 0.2 < spec.mask(T, T).mean() < 0.9


def test_dense_weights_include_the_bias():
    q, k, _ = qkv(2)
    bias = jax.random.normal(jax.random.key(3), (1, N, T, T))
    w = np.asarray(probabilities(Dense(), q, k, bias=bias))
    s = np.einsum("btnh,bsnh->bnts", np.asarray(q, np.float64), np.asarray(k, np.float64)) / np.sqrt(H)
    s = s + np.asarray(bias, np.float64)
    expected = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(w, expected / expected.sum(-1, keepdims=True), atol=2e-6)


def performer_reference(spec, q, k, see):
    """float64 phi(q).phi(k) / row sum under `see` [B, T, S], with phi(x) = exp(W x' - |x'|^2/2) / sqrt(m)."""
    w = spec.features(H)
    def phi(x):
        x = np.asarray(x, np.float64) * H ** -0.25
        return np.exp(np.einsum("btnh,mh->btnm", x, w) - 0.5 * (x * x).sum(-1, keepdims=True)) / np.sqrt(len(w))
    kernel = np.einsum("btnm,bsnm->bnts", phi(q), phi(k)) * see[:, None]
    total = kernel.sum(-1, keepdims=True)
    return kernel / np.where(total > 0, total, 1.0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seg", [None, PADDED, PACKED], ids=["plain", "padded", "packed"])
def test_performer_weights_are_its_feature_map(causal, seg):
    spec = Performer(num_features=16, seed=1, chunk_size=8)
    q, k, v = qkv(4)
    segs = {} if seg is None else {"q_segment_ids": jnp.asarray(seg), "kv_segment_ids": jnp.asarray(seg)}
    w = np.asarray(probabilities(spec, q, k, causal=causal, **segs))
    see = materialised_mask(Dense(), causal, seg)[:, 0]  # PACKED's segments are contiguous runs
    np.testing.assert_allclose(w, performer_reference(spec, q, k, see), rtol=1e-4, atol=1e-6)
    out = np.asarray(spec(q, k, v, causal=causal, **segs))
    np.testing.assert_allclose(np.einsum("bnts,bsnh->btnh", w, np.asarray(v)), out, atol=2e-5)
    # an approximation: close to softmax with many features, not equal to it
    exact = reference_softmax(q, k, see[:, None])
    assert 1e-3 < np.abs(w - exact).max() < 1.0


def test_performer_weights_for_cross_attention():
    spec = Performer(num_features=16, seed=0)
    q, k, v = qkv(5, t=6, s=T)
    w = np.asarray(probabilities(spec, q, k))
    np.testing.assert_allclose(w, performer_reference(spec, q, k, np.ones((B, 6, T), bool)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.einsum("bnts,bsnh->btnh", w, np.asarray(v)), spec(q, k, v), atol=2e-5)


# ---- whole models against the reference library -----------------------------------------------

def test_bert_matches_reference_output_attentions():
    ref = dict(np.load(FIXTURES / "attention" / "bert.npz"))
    model, variables = tj.from_pretrained(PRETRAINED / "bert")
    weights = tj.attention_weights(model, variables, ref["input_ids"], token_types=ref["token_type_ids"])
    real = ref["attention_mask"].astype(bool)  # [B T]: padded query rows are zeros here, undefined there
    assert isinstance(weights, tuple) and len(weights) == len(ref["attentions"])
    for ours, theirs in zip(weights, ref["attentions"]):
        assert ours.shape == theirs.shape and ours.dtype == jnp.float32
        ours = np.asarray(ours)
        assert np.abs(ours - theirs).transpose(0, 2, 1, 3)[real].max() <= 1e-4
        assert not ours.transpose(0, 2, 1, 3)[~real].any()
        assert not ours[..., ~real[1]][1].any()  # no weight on padding keys
    assert (~real).any()


def test_forward_method_takes_the_reference_names():
    """`method="forward"` with the tokenizer's output names (attention_mask marks the padding)."""
    ref = dict(np.load(FIXTURES / "attention" / "bert.npz"))
    model, variables = tj.from_pretrained(PRETRAINED / "bert")
    weights = tj.attention_weights(model, variables, method="forward", input_ids=ref["input_ids"],
                                   attention_mask=ref["attention_mask"], token_type_ids=ref["token_type_ids"])
    real = ref["attention_mask"].astype(bool)
    ours = np.stack([np.asarray(w) for w in weights])  # [L B N T S]
    assert np.abs(ours - ref["attentions"]).transpose(1, 3, 0, 2, 4)[real].max() <= 1e-4


def test_t5_matches_reference_with_relative_bias():
    ref = dict(np.load(PRETRAINED / "t5" / "reference.npz"))
    expected = dict(np.load(FIXTURES / "attention" / "t5.npz"))
    model, variables = tj.from_pretrained(PRETRAINED / "t5")
    weights = tj.attention_weights(model, variables, ref["input_ids"], ref["decoder_input_ids"])
    assert set(weights) == {"encoder", "decoder", "cross"}
    real = ref["attention_mask"].astype(bool)
    for kind in ("encoder", "decoder", "cross"):
        ours = np.stack([np.asarray(w) for w in weights[kind]])  # [L B N T S]
        assert ours.shape == expected[kind].shape
        diff = np.abs(ours - expected[kind])
        rows = diff.transpose(1, 3, 0, 2, 4)[real] if kind == "encoder" else diff  # real encoder queries
        assert rows.max() <= 1e-4, kind


def test_llama_matches_reference_with_rotary_and_grouped_query():
    ref = dict(np.load(PRETRAINED / "llama" / "reference.npz"))
    expected = np.load(FIXTURES / "attention" / "llama.npz")["attentions"]
    model, variables = tj.from_pretrained(PRETRAINED / "llama")
    assert model.cfg.num_kv_heads < model.cfg.num_heads
    ours = np.stack([np.asarray(w) for w in tj.attention_weights(model, variables, ref["input_ids"])])
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_gemma3_matches_reference_with_sliding_windows_and_qk_norm():
    ref = dict(np.load(PRETRAINED / "gemma3" / "reference.npz"))
    expected = np.load(FIXTURES / "attention" / "gemma3.npz")["attentions"]
    model, variables = tj.from_pretrained(PRETRAINED / "gemma3")
    ours = np.stack([np.asarray(w) for w in tj.attention_weights(model, variables, ref["input_ids"])])
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    specs = model.cfg.decoder_specs
    assert any(isinstance(s, Windowed) for s in specs) and any(not isinstance(s, Windowed) for s in specs)
    n = ours.shape[-1]
    for layer, spec in enumerate(specs):
        assert not ours[layer][..., ~spec.mask(n, n, True)].any()


# ---- every model layout ----------------------------------------------------------------------

def init(model, *inputs):
    return jax.jit(model.init)(jax.random.key(1), *inputs)  # compiled: eager init is slow


def tiny(**overrides):
    return tj.tiny().replace(vocab_size=64, d_model=16, num_heads=2, d_ff=32, max_len=32, **overrides)


def test_scanned_layers_give_the_same_weights_in_layer_order():
    """Per-layer specs (Windowed, Dense) scanned as groups of two: layer i = g * 2 + j."""
    cfg = tiny(num_encoder_layers=4, num_decoder_layers=2,
               encoder_attention=(Windowed(2), Dense(), Windowed(2), Dense()))
    src = jax.random.randint(jax.random.key(0), (2, 12), 1, 64)
    tgt = jax.random.randint(jax.random.key(1), (2, 6), 1, 64)
    plain = tj.Transformer(cfg.replace(scan_layers=False))
    variables = init(plain, src, tgt)
    expected = tj.attention_weights(plain, variables, src, tgt)
    scanned = tj.Transformer(cfg.replace(scan_layers=True))
    got = tj.attention_weights(scanned, {"params": tj.stack_layers(variables["params"], cfg)}, src, tgt)
    assert [w.shape for w in got["cross"]] == [(2, 2, 6, 12)] * 2
    for kind in ("encoder", "decoder", "cross"):
        assert len(got[kind]) == len(expected[kind])
        for a, b in zip(got[kind], expected[kind]):
            np.testing.assert_allclose(a, b, atol=1e-6)
    window = Windowed(2).mask(12, 12)
    assert not np.asarray(got["encoder"][2])[..., ~window].any()  # layer 2 is windowed
    assert np.asarray(got["encoder"][3])[..., ~window].any()  # layer 3 is dense


@pytest.mark.parametrize("name", ["EncoderClassifier", "TokenClassifier", "QuestionAnswering", "MaskedLM",
                                  "DecoderLM"])
def test_single_stack_models_return_a_tuple_of_layers(name):
    cfg = tiny(num_encoder_layers=2, num_decoder_layers=2, num_classes=3)
    model = getattr(tj, name)(cfg)
    tokens = jax.random.randint(jax.random.key(0), (2, 10), 1, 64).at[1, 7:].set(0)
    weights = tj.attention_weights(model, init(model, tokens), tokens)
    assert isinstance(weights, tuple) and len(weights) == 2
    w = np.asarray(weights[1])
    assert w.shape == (2, 2, 10, 10)
    if name == "DecoderLM":
        assert not w[..., np.triu(np.ones((10, 10), bool), 1)].any()
    else:
        assert not w[1, :, :, 7:].any() and not w[1, :, 7:].any()


def test_shared_layer_gives_one_entry_per_layer():
    """share_layers (ALBERT): one block run per layer; its sown values are the layers in order."""
    cfg = tiny(num_encoder_layers=3, num_decoder_layers=0, share_layers=True)
    model = tj.MaskedLM(cfg)
    tokens = jax.random.randint(jax.random.key(0), (1, 6), 1, 64)
    variables = init(model, tokens)
    weights = tj.attention_weights(model, variables, tokens)
    assert len(weights) == 3
    unshared = tj.MaskedLM(cfg.replace(share_layers=False))
    params = jax.tree.map(lambda x: x, variables["params"])
    encoder = dict(params["encoder"])
    block = encoder.pop("shared_layer")
    params["encoder"] = {**encoder, **{f"layer_{i}": block for i in range(3)}}
    expected = tj.attention_weights(unshared, {"params": params}, tokens)
    for a, b in zip(weights, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(np.asarray(weights[0]) - np.asarray(weights[2])).max() > 1e-3


def test_vit_weights():
    cfg = tiny(num_encoder_layers=2, num_classes=3, pooling="cls")
    model = tj.ViT(cfg, tj.ViTConfig(image_size=8, patch_size=4, num_channels=3))
    images = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3))
    weights = tj.attention_weights(model, init(model, images), images)
    assert len(weights) == 2 and weights[0].shape == (1, 2, 5, 5)  # 4 patches + CLS
    np.testing.assert_allclose(np.asarray(weights[0]).sum(-1), 1.0, atol=1e-5)


def test_training_path_sows_nothing():
    cfg = tiny(num_encoder_layers=1)
    model = tj.EncoderClassifier(cfg)
    tokens = jnp.ones((1, 4), jnp.int32)
    variables = init(model, tokens)
    assert "attention_weights" not in variables
    _, sown = model.apply(variables, tokens, mutable=["intermediates"])
    assert "attention_weights" not in sown


def test_mutable_is_rejected():
    model = tj.EncoderClassifier(tiny(num_encoder_layers=1))
    tokens = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="mutable"):
        tj.attention_weights(model, {}, tokens, mutable=["cache"])
