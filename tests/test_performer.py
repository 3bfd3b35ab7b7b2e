"""Performer (FAVOR+): its own definition in float64 NumPy, convergence to softmax attention, packing and
padding, recurrent decoding, and the config / command-line plumbing."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax import cli
from transformer_jax.attention import Dense, Performer, masks
from transformer_jax.attention.module import MultiHeadAttention
from transformer_jax.attention.performer import orthogonal_features
from transformer_jax.train import experiment

B, N, H = 2, 2, 8


def reference(q, k, v, w, causal, qs=None, ks=None):
    """The definition, materialised in float64: A = phi(q') phi(k')^T under the mask, out = A v / A 1."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))

    def phi(x):
        x = x * x.shape[-1] ** -0.25
        return np.exp(np.einsum("btnh,mh->btnm", x, w) - 0.5 * (x * x).sum(-1, keepdims=True)) / np.sqrt(len(w))

    T, S = q.shape[1], k.shape[1]
    mask = np.ones((q.shape[0], 1, T, S), bool)
    if causal:
        mask = mask & np.tril(np.ones((T, S), bool))
    if qs is not None or ks is not None:
        qs = np.ones((q.shape[0], T), int) if qs is None else qs
        ks = np.ones((k.shape[0], S), int) if ks is None else ks
        mask = mask & np.asarray(masks.segment_mask(jnp.asarray(qs), jnp.asarray(ks)))[:, None]
    a = np.einsum("btnm,bsnm->bnts", phi(q), phi(k)) * mask  # [B N T S]
    den = a.sum(-1).transpose(0, 2, 1)[..., None]  # [B T N 1]
    return np.einsum("bnts,bsnh->btnh", a, v) / np.where(den == 0, 1, den)


def segments(kind, n, seed):
    rng = np.random.default_rng(seed)
    if kind == "none":
        return None
    if kind == "pad":
        return jnp.asarray(np.arange(n)[None] < rng.integers(1, n + 1, size=(B, 1)), jnp.int32)
    ids = np.sort(rng.integers(0, 4, size=(B, n)), axis=1)[:, ::-1]  # runs 3, 2, 1, then padding 0
    return jnp.asarray(ids.copy(), jnp.int32)


def qkv(seed, T, S=None, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [scale * jax.random.normal(kk, (B, n, N, H)) for kk, n in zip(keys, (T, S or T, S or T))]


# (T, causal, segments, chunk_size): one position, a length off the chunk grid, packed runs crossing
# chunk boundaries, right padding, and a chunk larger than the sequence.
CASES = [(1, True, "none", 4), (37, False, "none", 8), (37, True, "packed", 8),
         (37, False, "packed", 8), (21, False, "pad", 4), (21, True, "pad", 64)]


@pytest.mark.parametrize("T,causal,seg,chunk", CASES, ids=repr)
def test_matches_its_float64_definition(T, causal, seg, chunk):
    spec = Performer(num_features=24, seed=T, chunk_size=chunk)  # 24 = 3 blocks of 8 orthogonal rows
    q, k, v = qkv(T, T)
    s = segments(seg, T, T)
    got = jax.jit(lambda q, k, v: spec(q, k, v, causal=causal, q_segment_ids=s, kv_segment_ids=s))(q, k, v)
    want = reference(q, k, v, spec.features(H), causal, s, s)
    assert got.shape == (B, T, N, H) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    if s is not None:  # padding queries see nothing and return zeros
        assert not np.asarray(got)[np.asarray(s) == 0].any()


def test_segments_are_contiguous_runs():
    """The documented packing semantics: an id that comes back after another id starts a new segment
    (runs [1 1 2 2 1 1] act as [1 1 2 2 3 3]), in both directions and across chunk boundaries."""
    spec, T = Performer(num_features=16, chunk_size=4), 12
    q, k, v = qkv(2, T)
    ids = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 2, 1, 1, 0, 0], [5, 5, 5, 5, 5, 5, 7, 7, 7, 5, 5, 5]], jnp.int32)
    runs = np.asarray([[1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0, 0], [1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3]])
    for causal in (False, True):
        got = jax.jit(lambda q, k, v: spec(q, k, v, causal=causal, q_segment_ids=ids, kv_segment_ids=ids))(q, k, v)
        np.testing.assert_allclose(got, reference(q, k, v, spec.features(H), causal, runs, runs), rtol=2e-5, atol=2e-6)


def test_cross_attention_lengths_and_features():
    spec = Performer(num_features=20, seed=1)
    q, k, v = qkv(3, 5, 40)
    np.testing.assert_allclose(jax.jit(spec)(q, k, v), reference(q, k, v, spec.features(H), False), rtol=2e-5, atol=2e-6)
    w = spec.features(H)  # blocks of H orthogonal rows, the last block cut to fit; fixed by the seed
    assert w.shape == (20, H)
    for block in (w[:8], w[8:16]):
        gram = block @ block.T
        np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9)
    orthogonal_features.cache_clear()
    np.testing.assert_array_equal(Performer(num_features=20, seed=1).features(H), w)
    assert not np.allclose(Performer(num_features=20, seed=2).features(H), w)


def test_features_give_an_unbiased_softmax_kernel():
    """E_W[phi(x).phi(y)] = exp(x.y) over seeds. Catches a non-uniform orthogonal draw: NumPy's QR
    without the sign fix tilts each row's first coordinate and is off by ~9% here."""
    x = np.eye(H)[0] * 0.5
    est = [np.mean(np.exp(w @ x - x @ x / 2) ** 2) for w in (orthogonal_features(H, H, s) for s in range(2000))]
    assert abs(np.mean(est) / np.exp(x @ x) - 1) < 0.04  # standard error ~1%


def test_gradients_match_the_materialised_definition():
    """Backward through the chunked scans, the global sum and their stop-gradient stabilisers equals
    autodiff of the [T, S] definition in float32: packed causal, packed and padded bidirectional."""
    T, spec = 19, Performer(num_features=16, seed=4, chunk_size=4)
    w = jnp.asarray(spec.features(H), jnp.float32)

    def materialised(q, k, v, causal, s):
        phi = lambda x: jnp.exp(jnp.einsum("btnh,mh->btnm", x * H ** -0.25, w)  # noqa: E731
                                - 0.5 * jnp.sum((x * H ** -0.25) ** 2, -1, keepdims=True))
        mask = masks.combine(masks.causal_mask(T, T) if causal else None, masks.segment_mask(s, s))
        a = jnp.einsum("btnm,bsnm->bnts", phi(q), phi(k)) * mask
        den = a.sum(-1).transpose(0, 2, 1)[..., None]
        return jnp.einsum("bnts,bsnh->btnh", a, v) / jnp.where(den == 0, 1, den)

    q, k, v = qkv(6, T, scale=0.7)
    do = jax.random.normal(jax.random.key(7), q.shape)
    packed, padded = segments("packed", T, 5), segments("pad", T, 5)
    for causal, s in ((True, packed), (False, packed), (False, padded)):
        @jax.jit
        def both(q, k, v, do):
            got = jax.vjp(lambda q, k, v: spec(q, k, v, causal=causal, q_segment_ids=s, kv_segment_ids=s), q, k, v)
            want = jax.vjp(lambda q, k, v: materialised(q, k, v, causal, s), q, k, v)
            return got[1](do), want[1](do)

        got, want = both(q, k, v, do)
        for name, a, b in zip(("dq", "dk", "dv"), got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))), err_msg=name)


def test_error_against_softmax_shrinks_with_more_features():
    q, k, v = qkv(8, 48, scale=0.5)
    dense = np.asarray(Dense()(q, k, v))

    def mean_error(m):
        return np.mean([np.abs(np.asarray(Performer(num_features=m, seed=s)(q, k, v)) - dense).mean()
                        for s in range(4)])

    e16, e256 = mean_error(16), mean_error(256)
    assert e256 < 0.5 * e16, (e16, e256)  # Monte Carlo: ~1 / sqrt(m) once m is not tiny


def test_large_logits_stay_finite():
    """Keys far larger than the rest: the running maximum keeps every exp() <= 1, no inf or NaN."""
    q, k, v = qkv(9, 40, scale=6.0)
    s, spec = segments("packed", 40, 9), Performer(num_features=16, chunk_size=8)
    both = jax.jit(lambda q, k, v: [spec(q, k, v, causal=c, q_segment_ids=s, kv_segment_ids=s) for c in (True, False)])
    assert all(np.isfinite(np.asarray(out)).all() for out in both(q, k, v))


def test_recurrent_decoding_matches_the_causal_pass_with_grouped_heads():
    mha = MultiHeadAttention(num_heads=4, head_dim=8, num_kv_heads=2, spec=Performer(16, chunk_size=4), causal=True)
    x = jax.random.normal(jax.random.key(10), (2, 11, 16))
    params = mha.init(jax.random.key(11), x)
    full = mha.apply(params, x)
    step = jax.jit(lambda cache, xt: mha.apply({**params, **cache}, xt, decode=True, mutable=["cache"]))
    cache, outs = {"cache": mha.spec.decode_state(2, 4, 8)}, []  # the whole cache: a fresh running state
    for t in range(x.shape[1]):
        out, state = step(cache, x[:, t:t + 1])
        cache, outs = {"cache": state["cache"]}, outs + [out]
    assert cache["cache"]["performer_num"].shape == (2, 4, 16, 8)  # fixed size, whatever the length
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)


def test_decoder_lm_decodes_and_generates():
    cfg = tj.tiny(num_encoder_layers=0, num_decoder_layers=1, max_len=16,
                  decoder_attention=Performer(num_features=16, chunk_size=4))
    model = tj.DecoderLM(cfg)
    seq = jax.random.randint(jax.random.key(12), (2, 9), 3, cfg.vocab_size)
    variables = model.init(jax.random.key(13), seq)
    step = jax.jit(lambda cache, tok: model.apply({**variables, "cache": cache}, tok, decode=True, mutable=["cache"]))
    cache, outs = tj.decode.init_cache(model, 2), []
    for t in range(seq.shape[1]):
        logits, state = step(cache, seq[:, t:t + 1])
        cache, outs = state["cache"], outs + [logits]
    np.testing.assert_allclose(jnp.concatenate(outs, 1), model.apply(variables, seq), atol=1e-5, rtol=0)
    out = tj.generate(model, variables, seq[:, :3], max_new_tokens=4)
    assert np.asarray(out).shape[0] == 2


def test_config_and_command_line():
    default = os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")
    fv = cli._flags(["--config", default, "--workdir", "unused",
                     "--config.model.encoder_attention=Performer(num_features=64)",
                     "--config.model.decoder_attention=Performer(16, seed=2, chunk_size=32)"])
    cfg = experiment.model_config(fv.config)
    assert cfg.encoder_attention == Performer(num_features=64)
    assert cfg.decoder_attention == Performer(16, seed=2, chunk_size=32)
    spec = experiment.parse_attention("Performer(num_features=64)", "encoder_attention")
    assert spec == Performer(num_features=64)
    assert experiment.parse_attention("(Performer(32, seed=3), Dense())") == (Performer(32, seed=3), Dense())
    cfg = tj.tiny(encoder_attention=spec, decoder_attention=Performer(16))
    assert cfg.encoder_specs == (spec,) * cfg.num_encoder_layers
    # FLOPs: Performer pays ~2m keys per query, not n
    long_dense = tj.model.flops_per_token(cfg.replace(encoder_attention=Dense()), 4096, 8)
    assert tj.model.flops_per_token(cfg, 4096, 8) < long_dense
    with pytest.raises(ValueError, match="cross_attention=Performer.*use Dense\\(\\) or Flash\\(\\)"):
        tj.tiny(cross_attention=Performer())
    with pytest.raises(ValueError, match="encoder_attention=Performer.*relative"):
        tj.tiny(position="relative", encoder_attention=Performer())
    with pytest.raises(ValueError, match="Performer.num_features"):
        experiment.parse_attention("Performer(num_features=0)", "encoder_attention")


def test_bad_settings_and_inputs_raise():
    for kwargs, field in [({"num_features": 0}, "num_features"), ({"chunk_size": -1}, "chunk_size"),
                          ({"seed": 1.5}, "seed"), ({"num_features": True}, "num_features")]:
        with pytest.raises(ValueError, match=field):
            Performer(**kwargs)
    q, k, _ = qkv(0, 8, 6)
    with pytest.raises(ValueError, match="T=8, S=6"):
        Performer()(q, k, k, causal=True)
    with pytest.raises(ValueError, match="T=8, S=6"):
        Performer()(q, k, k, kv_segment_ids=jnp.ones((B, 6), jnp.int32))
    np.testing.assert_array_equal(Performer().mask(3, 3, causal=True), np.tril(np.ones((3, 3), bool)))
    assert Performer().mask(2, 5).all()
