"""Every attention pattern against `Dense` under its own materialised mask, plus the contract's edges."""

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.attention import BlockSparse, Dense, Flash, Performer, Windowed, masked_softmax_attention, masks
from transformer_jax.attention import sparse as sparse_mod

B, N, H = 2, 2, 8


def _segments(kind: str, n: int, seed: int):
    """[B, n] segment ids: None, right padding (per-row lengths) or packed segments with padding."""
    rng = np.random.default_rng(seed)
    if kind == "none":
        return None
    if kind == "pad":
        lengths = rng.integers(1, n + 1, size=B)
        return jnp.asarray(np.arange(n)[None, :] < lengths[:, None], jnp.int32)
    ids = np.sort(rng.integers(0, 4, size=(B, n)), axis=1)[:, ::-1]  # 3..1 then 0 = padding at the end
    return jnp.asarray(ids.copy(), jnp.int32)


def _check_against_dense(spec, T, S, causal, seg, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q, k, v, do = (jax.random.normal(kk, (B, n, N, H), jnp.float32) for kk, n in zip(keys, (T, S, S, T)))
    qs = _segments(seg, T, seed + 1)
    ks = qs if (T == S or qs is None) else _segments(seg, S, seed + 2)
    mask = masks.combine(spec.mask(T, S, causal), None if qs is None else masks.segment_mask(qs, ks))

    @jax.jit
    def both(q, k, v, do):
        got, vjp = jax.vjp(lambda q, k, v: spec(q, k, v, causal=causal, q_segment_ids=qs, kv_segment_ids=ks), q, k, v)
        want, vjp_ref = jax.vjp(lambda q, k, v: masked_softmax_attention(q, k, v, mask), q, k, v)
        return (got, *vjp(do)), (want, *vjp_ref(do))

    got, want = both(q, k, v, do)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b)) + 1), err_msg=name)


# (spec, T, causal, segments): lengths 1, 2, block - 1, not a multiple and a multiple of the block,
# causal and bidirectional, with no segments, right padding and packed segments (with padding).
_CASES = [
    (Flash(16), 1, False, "none"), (Flash(16), 2, True, "packed"), (Flash(16), 15, False, "pad"),
    (Flash(16), 37, True, "packed"), (Flash(16), 48, False, "packed"),
    (Windowed(5), 1, True, "pad"), (Windowed(5), 2, False, "none"), (Windowed(5), 15, True, "packed"),
    (Windowed(5), 37, False, "pad"), (Windowed(5), 64, True, "packed"), (Windowed(0), 37, False, "packed"),
    (Windowed(20), 50, True, "none"),
    (BlockSparse(8, 3, 1, 2, seed=3), 1, False, "pad"), (BlockSparse(8, 3, 1, 2, seed=3), 2, True, "none"),
    (BlockSparse(8, 3, 1, 2, seed=3), 7, False, "packed"), (BlockSparse(8, 3, 1, 2, seed=3), 64, True, "pad"),
]


@pytest.mark.parametrize("spec,T,causal,seg", _CASES, ids=lambda x: repr(x))
def test_matches_dense(spec, T, causal, seg):
    _check_against_dense(spec, T, T, causal, seg, seed=T)


def test_block_sparse_long_enough_to_be_sparse():
    spec = BlockSparse(8, 3, 1, 2, seed=5)
    assert spec.mask(100, 100).mean() < 0.6  # 13 blocks: the pattern really is sparse here
    _check_against_dense(spec, 100, 100, False, "packed", seed=11)
    _check_against_dense(spec, 100, 100, True, "pad", seed=12)


@pytest.mark.parametrize("spec,T,causal,seg", [
    (Windowed(5), 100, True, "packed"), (Windowed(20), 100, False, "pad"),
    (BlockSparse(8, 3, 1, 2, seed=5), 100, False, "packed"), (BlockSparse(8, 3, 1, 2, seed=5), 100, True, "pad"),
    (Flash(16), 100, True, "packed"),
], ids=repr)
def test_matches_dense_over_several_query_chunks(monkeypatch, spec, T, causal, seg):
    """Long inputs go through the kernel in chunks of query blocks (the last one padded)."""
    from transformer_jax.attention import blockwise

    monkeypatch.setattr(blockwise, "CHUNK_ROWS", 24)  # 3 blocks of 8 (or 1-2 of 16) per chunk
    _check_against_dense(spec, T, T, causal, seg, seed=T + 1)


@pytest.mark.parametrize("T,S,causal", [(5, 40, False), (33, 17, True)])
def test_flash_cross_attention(T, S, causal):
    _check_against_dense(Flash(16), T, S, causal, "pad", seed=T)


def test_windowed_mask_by_hand():
    np.testing.assert_array_equal(Windowed(1).mask(4, 4), np.array([
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 1, 1],
        [0, 0, 1, 1]], bool))
    np.testing.assert_array_equal(Windowed(1).mask(4, 4, causal=True), np.array([
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1]], bool))


def test_block_sparse_mask_by_hand():
    # blocks of 2, window = the block itself, block 0 global, no random blocks; length 5 (3 blocks).
    spec = BlockSparse(block_size=2, window_blocks=1, global_blocks=1, random_blocks=0)
    np.testing.assert_array_equal(spec.mask(5, 5), np.array([
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1]], bool))
    np.testing.assert_array_equal(spec.mask(5, 5, causal=True), np.array([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1]], bool))
    # window of 3 blocks centred on itself, block 0 global: 4 blocks of 1
    np.testing.assert_array_equal(BlockSparse(1, 3, 1, 0).mask(4, 4), np.array([
        [1, 1, 1, 1],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
        [1, 0, 1, 1]], bool))


def test_block_sparse_random_blocks_seeded():
    spec = BlockSparse(4, 3, 2, 3, seed=7)
    table = spec.block_table(32)
    assert table.shape == (30, 8)
    for row, i in zip(table, range(2, 32)):
        valid = row[row >= 0]
        # block 2's window holds global block 1; block 31 has no right neighbour
        assert len(set(valid.tolist())) == len(valid) == 8 - (i == 2) - (i == 31)
        assert {0, 1} <= set(valid.tolist()) and {i - 1, i, min(i + 1, 31)} <= set(valid.tolist())
    sparse_mod._block_table.cache_clear()
    np.testing.assert_array_equal(BlockSparse(4, 3, 2, 3, seed=7).block_table(32), table)  # reproducible
    assert not np.array_equal(BlockSparse(4, 3, 2, 3, seed=8).block_table(32), table)
    causal = spec.block_table(32, causal=True)
    assert (causal <= np.arange(2, 32)[:, None]).all()  # random blocks come from the past
    assert not (spec.mask(128, 128, causal=True) & ~np.tril(np.ones((128, 128), bool))).any()


def test_bad_settings_raise():
    for make, field in [(lambda: Windowed(-1), "window"), (lambda: Flash(0), "block_size"),
                        (lambda: BlockSparse(block_size=0), "block_size"),
                        (lambda: BlockSparse(random_blocks=-1), "random_blocks"),
                        (lambda: BlockSparse(global_blocks=-2), "global_blocks"),
                        (lambda: BlockSparse(window_blocks=-1), "window_blocks")]:
        with pytest.raises(ValueError, match=field):
            make()
    q = jnp.zeros((1, 8, 2, 4))
    k = jnp.zeros((1, 6, 2, 4))
    for spec in (Windowed(2), BlockSparse(4)):
        with pytest.raises(ValueError, match="T=8, S=6"):
            spec(q, k, k)
        with pytest.raises(ValueError, match="T=8, S=6"):
            spec.mask(8, 6)
    with pytest.raises(ValueError, match="same shape"):
        Flash()(q, q, k)
    with pytest.raises(ValueError, match="q_segment_ids"):
        Windowed(2)(q, q, q, q_segment_ids=jnp.ones((1, 7), jnp.int32))
    # short sequences with fewer blocks than asked for still work (clipped), see test_matches_dense
    assert BlockSparse(64, 3, 2, 3).mask(3, 3).all()


def _big_vars(jaxpr, n, found):
    """Collect the avals of every var (recursing into scan / custom_vjp / pjit bodies) with two dims >= n."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            if sum(d >= n for d in shape) >= 2:
                found.append((eqn.primitive.name, shape))
        for val in eqn.params.values():
            for sub in val if isinstance(val, (tuple, list)) else (val,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    _big_vars(sub.jaxpr, n, found)
                elif isinstance(sub, jax_core.Jaxpr):
                    _big_vars(sub, n, found)
    return found


@pytest.mark.parametrize("spec,causal,segmented", [
    (Windowed(128), True, True), (BlockSparse(64, 3, 2, 3), True, True), (Flash(512), True, True),
    (Dense(), True, True), (Performer(64), True, True), (Performer(64), False, True), (Performer(64), False, False),
], ids=repr)
def test_no_n_by_n_intermediate(spec, causal, segmented):
    n = 4096
    x = jax.ShapeDtypeStruct((1, n, 2, 16), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, n), jnp.int32)

    def loss(q, k, v, s):
        s = s if segmented else None
        return jnp.sum(spec(q, k, v, causal=causal, q_segment_ids=s, kv_segment_ids=s))

    found = _big_vars(jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, x, x, seg).jaxpr, n, [])
    if isinstance(spec, Dense):
        assert found, "sanity: the walk must find dense attention's n x n scores"
    else:
        assert not found, found


def test_flash_fits_where_dense_does_not():
    n = 65536
    x = jax.ShapeDtypeStruct((1, n, 1, 64), jnp.float32)

    def peak(spec):
        f = jax.value_and_grad(lambda q, k, v: jnp.sum(spec(q, k, v)), argnums=(0, 1, 2))
        ma = jax.jit(f).lower(x, x, x).compile().memory_analysis()
        return ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes

    assert peak(Flash(512)) < 2**30  # one [n, 512] score tile at a time
    assert peak(Dense()) > 16 * 2**30  # n x n float32 alone is 16 GiB
