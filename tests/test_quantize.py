"""Weight-only quantization (transformer_jax.quantization): int8 per output channel within half a step of
the float weights, logits close to float32, ~4x fewer kernel bytes, 16-bit casts, generation and
classification on the result, and the named error for an unknown dtype."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
# the module is `quantization`; `tj.quantize` is its function
from transformer_jax.quantization import apply, dequantize, generate, quantize, quantize_int8, tree_bytes

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def seq2seq():
    cfg = tj.tiny(num_encoder_layers=1, num_decoder_layers=1, d_model=64, d_ff=128)
    model = tj.Transformer(cfg)
    src = jax.random.randint(jax.random.key(0), (2, 9), 3, 64)
    tgt = jax.random.randint(jax.random.key(1), (2, 6), 3, 64)
    variables = nn.meta.unbox(model.init(jax.random.key(2), src, tgt))
    return model, variables, src, tgt


@pytest.mark.parametrize("shape,n_in", [((48, 4, 8), 1), ((4, 8, 48), 2), ((40, 24), 1)])
def test_int8_round_trip_within_half_a_step_per_channel(shape, n_in):
    w = 0.3 * jax.random.normal(jax.random.key(3), shape) * jax.random.uniform(jax.random.key(4), shape[n_in:],
                                                                              minval=0.1, maxval=3.0)
    w = w.at[(0,) * n_in].set(0.0)  # one channel with a zero row still round-trips
    q, scale = quantize_int8(w, n_in)
    assert q.dtype == jnp.int8 and scale.shape == shape[n_in:] and scale.dtype == jnp.float32
    np.testing.assert_allclose(scale, np.abs(np.asarray(w)).max(axis=tuple(range(n_in))) / 127, rtol=1e-6)
    err = np.abs(np.asarray(q, np.float64) * np.asarray(scale, np.float64) - np.asarray(w, np.float64))
    assert np.all(err <= np.asarray(scale, np.float64) / 2 * (1 + 1e-5) + 1e-12)
    assert int(np.abs(np.asarray(q)).max()) == 127  # each channel's largest weight maps to ±127


def test_all_zero_channel_stays_zero():
    q, scale = quantize_int8(jnp.zeros((5, 3)), 1)
    assert float(jnp.abs(q).max()) == 0 and float(jnp.abs(scale).max()) == 0


def test_int8_logits_close_to_float32_and_kernels_four_times_smaller(seq2seq):
    model, variables, src, tgt = seq2seq
    q = tj.quantize(variables, "int8")
    kernels = [path for path, x in jax.tree_util.tree_leaves_with_path(q.variables)
               if path[-1].key == "kernel"]
    assert kernels and all(_leaf(q.variables, p).dtype == jnp.int8 for p in kernels)
    f32_kernel_bytes = sum(_leaf(variables, p).nbytes for p in kernels)
    int8_kernel_bytes = sum(_leaf(q.variables, p).nbytes for p in kernels)
    assert f32_kernel_bytes == 4 * int8_kernel_bytes
    assert q.nbytes < 0.45 * tree_bytes(variables)  # scales, biases, norms, embeddings stay float32
    ref = model.apply(variables, src, tgt)
    out = jax.jit(lambda q: q.apply(model, src, tgt))(q)
    assert 1e-5 < _rel(out, ref) < 3e-2
    with pytest.raises((TypeError, ValueError, AttributeError)):
        model.apply(q, src, tgt)  # the wrapper is not mistaken for float variables


def test_int8_embeddings_per_row(seq2seq):
    model, variables, src, tgt = seq2seq
    q = quantize(variables, "int8", embeddings=True)
    table = q.variables["params"]["shared_embedding"]
    assert table["embedding"].dtype == jnp.int8 and table["embedding_scale"].shape == (64, 1)
    assert _rel(apply(model, q, src, tgt), model.apply(variables, src, tgt)) < 3e-2


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 3e-2), ("float16", 3e-3), (jnp.bfloat16, 3e-2)])
def test_16_bit_casts(seq2seq, dtype, tol):
    model, variables, src, tgt = seq2seq
    q = quantize(variables, dtype)
    leaves = jax.tree_util.tree_leaves(q.variables)
    assert all(x.dtype == jnp.dtype(dtype) for x in leaves)
    assert q.nbytes * 2 == tree_bytes(variables)
    assert _rel(apply(model, q, src, tgt), model.apply(variables, src, tgt)) < tol


def test_generation_runs_on_int8(seq2seq):
    model, variables, src, _ = seq2seq
    q = quantize(variables, "int8")
    out = generate(model, q, src, max_len=5)
    assert out.shape == (2, 5) and out.dtype == jnp.int32
    # plain tj.generate on the dequantized variables gives the same tokens
    np.testing.assert_array_equal(out, tj.generate(model, dequantize(q), src, max_len=5))


def test_decoder_lm_generation_and_classification_on_quantized():
    lm = tj.DecoderLM(tj.tiny(num_encoder_layers=0, num_decoder_layers=1))
    prompt = jax.random.randint(jax.random.key(5), (2, 4), 3, 64)
    v = nn.meta.unbox(lm.init(jax.random.key(6), prompt))
    out = generate(lm, quantize(v, "bfloat16"), prompt, max_new_tokens=3,
                      prompt_lengths=np.array([4, 2], np.int32))
    assert out.shape == (2, 7)

    model, variables = tj.from_pretrained(FIXTURES / "bert_cls")
    ref = dict(np.load(FIXTURES / "bert_cls" / "reference.npz"))
    q = quantize(variables, "int8")
    logits = jax.jit(lambda q: q.apply(model, ref["input_ids"], token_types=ref["token_type_ids"]))(q)
    assert _rel(logits, ref["logits"]) < 3e-2
    np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(ref["logits"], -1))


@pytest.mark.parametrize("bad", ["int4", "fp8", "float32", jnp.float32, 8])
def test_unknown_dtype_names_the_valid_ones(seq2seq, bad):
    _, variables, _, _ = seq2seq
    with pytest.raises(ValueError, match="quantize: dtype=.* is not one of int8, bfloat16, float16"):
        quantize(variables, bad)


def test_quantizing_twice_is_refused(seq2seq):
    _, variables, _, _ = seq2seq
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(variables, "int8"), "int8")


def _leaf(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def test_generate_compiles_once_per_settings(seq2seq):
    from transformer_jax.quantization import _generate_jit

    model, variables, src, _ = seq2seq
    q = quantize(variables, "int8")
    generate(model, q, src, max_len=4)
    size = _generate_jit._cache_size()
    generate(model, q, src + 1, max_len=4)
    assert _generate_jit._cache_size() == size
