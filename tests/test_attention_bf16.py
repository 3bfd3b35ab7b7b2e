"""bfloat16 through the blockwise kernel (Flash, Windowed, BlockSparse) and through a whole model.

The contract: scores, softmax and log-sum-exp in float32 whatever the input dtype, so bfloat16 must
run on every backend (XLA:CPU used to reject its bf16 x bf16 -> f32 dots) and match float32 to
bfloat16 precision.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax.attention import BlockSparse, Flash, Windowed, masked_softmax_attention, masks

B, N, H = 2, 2, 8
SPECS = [Flash(8), Windowed(6), BlockSparse(8, 3, 1, 1, seed=1)]


def _padding(n: int, seed: int):
    """[B, n] right padding: row 0 full, row 1 a random shorter length (segment 0 = padding)."""
    length = np.random.default_rng(seed).integers(1, n)
    return jnp.asarray(np.arange(n)[None, :] < np.array([[n], [length]]), jnp.int32)


def _out_and_grads(spec, causal, seg, q, k, v, do):
    out, vjp = jax.vjp(lambda q, k, v: spec(q, k, v, causal=causal, q_segment_ids=seg, kv_segment_ids=seg), q, k, v)
    return (out, *vjp(do))


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_bfloat16_matches_float32(spec, causal):
    T = 40  # several blocks for every spec, not a multiple of the block
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    # Draw in bfloat16 so both runs see the same inputs; only the computation's precision differs.
    q, k, v, do = (jax.random.normal(kk, (B, T, N, H), jnp.bfloat16) for kk in keys)
    seg = _padding(T, seed=3)
    f = jax.jit(_out_and_grads, static_argnums=(0, 1))
    got = f(spec, causal, seg, q, k, v, do)
    want = f(spec, causal, seg, *(x.astype(jnp.float32) for x in (q, k, v, do)))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.dtype == jnp.bfloat16, name
        assert bool(jnp.all(jnp.isfinite(a))), name
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0, atol=2e-2 * scale, err_msg=name)


def test_bfloat16_eager():
    """Outside jit, op by op. BlockSparse covers every column kind (diagonal window, shared global,
    gathered random) and Flash (its global query rows)."""
    q, k, v = (jax.random.normal(kk, (B, 40, N, H), jnp.bfloat16) for kk in jax.random.split(jax.random.PRNGKey(1), 3))
    seg = _padding(40, seed=4)
    out = SPECS[2](q, k, v, causal=True, q_segment_ids=seg, kv_segment_ids=seg)
    mask = masks.combine(SPECS[2].mask(40, 40, causal=True), masks.segment_mask(seg, seg))
    want = masked_softmax_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask)
    assert out.dtype == jnp.bfloat16 and out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out, np.float32), want, rtol=0, atol=2e-2 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_dots_accumulate_in_float32_on_every_platform(platform):
    """Every dot returns float32; bfloat16 tiles feed the dot directly on GPU/TPU, upcast on CPU only."""

    def loss(q, k, v):
        return Windowed(6)(q, k, v, causal=True).astype(jnp.float32).sum()

    x = jnp.zeros((1, 32, N, H), jnp.bfloat16)
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x).lower(lowering_platforms=(platform,)).as_text()
    dots = re.findall(r"stablehlo\.dot_general.*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", text)
    assert len(dots) >= 6  # forward: scores, p v; backward: scores, dv, dp, dq, dk
    operand = "f32" if platform == "cpu" else "bf16"
    for lhs, rhs, out in dots:
        assert out.endswith("xf32>"), out
        assert lhs.endswith(f"x{operand}>") and rhs.endswith(f"x{operand}>"), (lhs, rhs)


def test_bfloat16_transformer():
    """init, apply and grad (all jitted) of an encoder-decoder in bfloat16 with every blockwise spec:
    Windowed encoder, BlockSparse decoder (causal) and Flash cross-attention (T != S)."""
    cfg = tj.tiny(encoder_attention=Windowed(6), decoder_attention=BlockSparse(8, 3, 1, 1, seed=1),
                  cross_attention=Flash(8), num_encoder_layers=1, num_decoder_layers=1, dtype="bfloat16")
    model = tj.Transformer(cfg)
    rng = np.random.default_rng(0)
    src = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, 24)), jnp.int32).at[1, 17:].set(0)  # padded
    tgt = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, 16)), jnp.int32).at[1, 11:].set(0)
    logits, variables = jax.jit(model.init_with_output)(jax.random.key(0), src, tgt)  # one compile
    assert logits.dtype == jnp.float32 and logits.shape == (2, 16, cfg.vocab_size)
    assert bool(jnp.all(jnp.isfinite(logits)))

    def cross_entropy(logits, tgt):
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.sum(jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0] * (tgt > 0)) / jnp.sum(tgt > 0)

    def loss(params, src, tgt):
        return cross_entropy(model.apply({**variables, "params": params}, src, tgt), tgt)

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"], src, tgt)
    np.testing.assert_allclose(float(value), float(cross_entropy(logits, tgt)), rtol=2e-2)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
