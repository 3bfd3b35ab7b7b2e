"""tj.hidden_states: every layer's hidden state, as the reference's output_hidden_states=True
(fixtures: tests/fixtures/pretrained/make_hidden_states.py, run in the reference environment)."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax import Transformer, tiny

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"


def _close(ours, ref, mask):
    ours, ref = np.asarray(ours, np.float32)[mask], ref[mask]  # real tokens only
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("case", ["bert", "gpt2", "vit"])
def test_matches_reference_output_hidden_states(case):
    model, variables = tj.from_pretrained(FIXTURES / case)
    ref = np.load(FIXTURES / case / "reference.npz")
    expected = np.load(FIXTURES / case / "hidden_states.npz")["hidden_states"]  # [L + 1, B, T, D]
    if case == "vit":  # the last entry is before the final norm, as the reference's
        inputs = {"pixel_values": ref["pixel_values"]}
        mask = np.ones(expected.shape[1:3], bool)
    else:
        inputs = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
        mask = ref["attention_mask"].astype(bool)
    if "token_type_ids" in ref:
        inputs["token_type_ids"] = ref["token_type_ids"]
    states = tj.hidden_states(model, variables, **inputs, method="forward")
    assert isinstance(states, tuple) and len(states) == len(expected) == 3  # 2 layers
    for i, (ours, theirs) in enumerate(zip(states, expected)):
        assert ours.shape == theirs.shape
        assert _close(ours, theirs, mask) <= 1e-4, (case, i)
    if case == "bert":  # the last entry is last_hidden_state
        last = model.apply(variables, **inputs, method="forward")["last_hidden_state"]
        np.testing.assert_allclose(np.asarray(states[-1])[mask], np.asarray(last)[mask], atol=1e-5)  # jit vs eager
    if case != "vit":
        assert "hidden_states" not in model.init(jax.random.PRNGKey(0), jnp.asarray(ref["input_ids"]))


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_scanned_and_shared_stacks_in_layer_order(norm_position):
    cfg = tiny(num_encoder_layers=4, num_decoder_layers=0, norm_position=norm_position)
    tokens = jnp.asarray([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]], jnp.int32)
    model = tj.Encoder(cfg)
    variables = model.init(jax.random.PRNGKey(0), tokens)
    expected = tj.hidden_states(model, variables, tokens)
    assert len(expected) == 5 and all(h.shape == (2, 6, 32) for h in expected)
    np.testing.assert_allclose(np.asarray(expected[-1]), np.asarray(model.apply(variables, tokens)), atol=1e-5)
    assert "hidden_states" not in variables  # never sown at init

    scanned = tj.Encoder(dataclasses.replace(cfg, scan_layers=True))  # stacked: layer order restored
    stacked = {"params": tj.stack_layers(variables["params"], cfg, root="encoder")}
    states = tj.hidden_states(scanned, stacked, tokens)
    assert len(states) == 5
    for a, b in zip(states, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)

    shared_cfg = dataclasses.replace(cfg, share_layers=True)  # one block run 4 times: 4 outputs
    shared = tj.Encoder(shared_cfg)
    shared_vars = shared.init(jax.random.PRNGKey(0), tokens)
    states = tj.hidden_states(shared, shared_vars, tokens)
    assert len(states) == 5
    np.testing.assert_allclose(np.asarray(states[-1]), np.asarray(shared.apply(shared_vars, tokens)), atol=1e-5)
    assert not np.allclose(np.asarray(states[1]), np.asarray(states[2]))


def test_encoder_decoder_gives_both_stacks():
    cfg = tiny(num_encoder_layers=2, num_decoder_layers=3)
    model = Transformer(cfg)
    src = jnp.asarray([[5, 6, 7, 0]], jnp.int32)
    tgt = jnp.asarray([[1, 8, 9]], jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), src, tgt)
    states = tj.hidden_states(model, variables, src, tgt)
    assert set(states) == {"encoder", "decoder"}
    assert len(states["encoder"]) == 3 and len(states["decoder"]) == 4
    np.testing.assert_allclose(np.asarray(states["encoder"][-1]),
                               np.asarray(model.apply(variables, src, method="encode")), atol=1e-5)


def test_forward_names_the_function():
    model, variables = tj.from_pretrained(FIXTURES / "bert")
    ids = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(TypeError, match="tj.hidden_states"):
        model.apply(variables, ids, output_hidden_states=True, method="forward")
