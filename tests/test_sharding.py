"""Mesh construction and the rules table; loss and gradients on a 2x2x2 mesh equal those on one device."""

import jax
import numpy as np
import pytest

from transformer_jax import Transformer, tiny
from transformer_jax import sharding as shd
from transformer_jax.train import optim
from transformer_jax.train.state import create_train_state
from transformer_jax.train.step import StepConfig, _loss_sums
from transformer_jax.train.synthetic import SyntheticIterator


def test_resolve_fills_minus_one_and_names_bad_fields():
    assert shd.resolve_mesh_shape({"data": -1, "tensor": 2}, 8) == {"data": 4, "fsdp": 1, "expert": 1, "tensor": 2}
    with pytest.raises(ValueError, match=r"mesh.data=-1 cannot fill 8 devices.*3"):
        shd.resolve_mesh_shape({"data": -1, "tensor": 3}, 8)
    with pytest.raises(ValueError, match="multiply to 4, but there are 8 devices"):
        shd.resolve_mesh_shape({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="unknown axes.*'pipe'"):
        shd.resolve_mesh_shape({"pipe": 2}, 8)
    with pytest.raises(ValueError, match="only one axis may be -1"):
        shd.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)


def test_params_are_created_sharded_by_the_rules():
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = Transformer(tiny(num_encoder_layers=1, num_decoder_layers=1))
    tx = optim.make_optimizer("adamw", optim.make_schedule("constant", learning_rate=1e-3, warmup_steps=0,
                                                           total_steps=1))
    batch = next(SyntheticIterator(global_batch_size=8, max_len=8, vocab_size=64))
    state, shardings = create_train_state(model, tx, batch, mesh)
    emb = state.params["shared_embedding"]["embedding"]  # [V D]: vocab -> tensor, embed -> fsdp
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (emb.shape[0] // 2, emb.shape[1] // 2)
    # Adam moments follow their parameters.
    mu = jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, dict) and "shared_embedding" in x)
    assert any(isinstance(m, dict) and m["shared_embedding"]["embedding"].sharding.spec == emb.sharding.spec
               for m in mu)


def _loss_and_grads(mesh, model, tx, batch, seed):
    state, shardings = create_train_state(model, tx, batch, mesh, seed=seed)
    cfg = StepConfig(label_smoothing=0.1)

    def fn(params, batch, rng):
        def loss(p):
            sums = _loss_sums(model, p, batch, rng, deterministic=False, cfg=cfg)
            return sums["loss"] / sums["weight"]
        return jax.value_and_grad(loss)(params)

    with shd.activate(mesh):
        out = jax.jit(fn, in_shardings=(shardings.params, shd.batch_spec_tree(batch, mesh), None),
                      out_shardings=(shd.replicated(mesh), shardings.params))(
            state.params, shd.shard_batch(batch, mesh), jax.random.PRNGKey(7))
    return jax.device_get(out)


def test_loss_and_grads_on_8_devices_equal_1_device():
    """data×fsdp×tensor = 2×2×2 vs a single device, dropout on (same rng): float32 rounding only."""
    model = Transformer(tiny(dropout_rate=0.1, num_encoder_layers=1, num_decoder_layers=1))
    tx = optim.make_optimizer("adamw", optim.make_schedule("constant", learning_rate=1e-3, warmup_steps=0,
                                                           total_steps=1))
    batch = next(SyntheticIterator(global_batch_size=8, max_len=12, vocab_size=64, seed=5))
    loss1, g1 = _loss_and_grads(shd.make_mesh({"data": 1}, jax.devices()[:1]), model, tx, batch, seed=2)
    loss8, g8 = _loss_and_grads(shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), model, tx, batch, seed=2)
    assert np.isfinite(loss1) and loss1 > 0
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g8, g1)


def test_state_with_masked_optimizer_parts_is_created_sharded():
    """optax.multi_transform leaves empty MaskedNode states for frozen parts; shardings must still
    pair with the right leaves (a shifted pairing once raised IndexError)."""
    import jax.numpy as jnp
    import optax

    import transformer_jax as tj

    model = tj.EncoderClassifier(tiny())
    frozen = lambda p: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: "frozen" if "embedding" in jax.tree_util.keystr(path) else "train", p)
    tx = optax.multi_transform({"train": optax.adamw(1e-3), "frozen": optax.set_to_zero()}, frozen)
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    batch = {"inputs": jnp.ones((4, 8), jnp.int32), "label": jnp.zeros((4,), jnp.int32)}
    state, shardings = create_train_state(model, tx, batch, mesh)
    kernel = state.params["encoder"]["layer_0"]["mlp"]["wi"]["kernel"]  # [embed, mlp]
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)
