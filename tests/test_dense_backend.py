"""Dense attention's backend choice: cuDNN on a GPU, XLA elsewhere, and never a silent fallback."""

import warnings

import jax
import numpy as np
import pytest

from transformer_jax.attention import Dense
from transformer_jax.attention import dense as dense_mod


def _qkv(seed=0, b=2, t=8, n=2, h=4):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, t, n, h)).astype(np.float32) for _ in range(3)]


def _segments():
    return np.array([[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)


def test_auto_on_cpu_is_xla_without_warning():
    q, k, v = _qkv()
    seg = _segments()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = Dense()(q, k, v, causal=True, q_segment_ids=seg, kv_segment_ids=seg)
    want = Dense(backend="xla")(q, k, v, causal=True, q_segment_ids=seg, kv_segment_ids=seg)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_cudnn_requested_without_gpu_warns_and_matches_xla():
    q, k, v = _qkv(1)
    with pytest.warns(UserWarning, match="cuDNN's fused kernel cannot run here .*no GPU"):
        got = Dense(backend="cudnn")(q, k, v, causal=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(Dense(backend="xla")(q, k, v, causal=True)))


def test_gpu_fallback_names_the_reason(monkeypatch):
    """On a GPU, `auto` tries cuDNN first; when cuDNN rejects the input (here float32, as cuDNN
    takes only float16/bfloat16) the XLA result comes back with a warning naming the error."""
    monkeypatch.setattr(dense_mod.jax, "default_backend", lambda: "gpu")
    q, k, v = _qkv(2)
    seg = _segments()
    with pytest.warns(UserWarning, match="cuDNN's fused kernel cannot run here \\(\\w+Error"):
        got = Dense()(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
    monkeypatch.undo()
    want = Dense(backend="xla")(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_padding_rows_are_zero_and_match_jax_reference():
    """The fast path against jax.nn.dot_product_attention (XLA) on the rows that see a key."""
    q, k, v = _qkv(3)
    seg = _segments()
    got = np.asarray(Dense()(q, k, v, causal=True, q_segment_ids=seg, kv_segment_ids=seg))
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0) & np.tril(np.ones((8, 8), bool))
    ref = np.asarray(jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla"))
    real = seg != 0
    np.testing.assert_allclose(got[real], ref[real], atol=1e-6)
    np.testing.assert_array_equal(got[~real], 0.0)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="Dense.backend must be 'auto', 'xla' or 'cudnn'; got 'tpu'"):
        Dense(backend="tpu")
