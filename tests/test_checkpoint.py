"""Checkpoints: round trip with data state, keep last k + best, skip an unreadable latest one (one
line; moved aside so it frees its keep slot), and restore onto a different mesh (8 devices -> 1 -> 8)."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from transformer_jax import sharding as shd
from transformer_jax.checkpoint import Checkpointer
from transformer_jax.train.state import TrainState, abstract_state


def _state(mesh, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt_state = tx.update(params, tx.init(params), params)[1]  # non-trivial moments
    state = TrainState(step=jnp.array(5, jnp.int32), params=params, opt_state=opt_state,
                       rng=jax.random.PRNGKey(seed))
    return jax.device_put(state, _shardings(state, mesh))


def _shardings(state, mesh):
    return jax.tree.map(lambda x: NamedSharding(mesh, P("fsdp", "tensor") if x.ndim == 2 else P()), state)


def _equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_keeps_last_k_and_best_and_restores_data_state(tmp_path):
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state = _state(mesh)
    losses = {1: 0.5, 2: 0.1, 3: 0.7, 4: 0.9, 5: 0.8}
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="eval_loss", best_mode="min") as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, state, {"position": step}, metrics={"eval_loss": loss})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5]  # last two + the best (step 2)
        assert ckpt.best_step() == 2
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:  # a fresh process would do this
        restored, data_state, step = ckpt.restore(abstract_state(state, _shardings(state, mesh)))
    assert step == 5 and data_state == {"position": 5}
    _equal(restored, state)


def _corrupt_arrays(directory, step):
    """Overwrite the array chunks of `step` (not its JSON): TensorStore then fails with its whole spec."""
    files = [f for f in glob.glob(os.path.join(directory, str(step), "state", "**", "d", "*"), recursive=True)
             if os.path.isfile(f)]
    assert files
    for f in files:
        with open(f, "wb") as fh:
            fh.write(b"truncated")


def test_unreadable_latest_falls_back_in_one_line_and_is_moved_aside(tmp_path, capsys):
    mesh = shd.make_mesh({"data": -1})
    state = _state(mesh)
    with Checkpointer(tmp_path, max_to_keep=3, async_save=False) as ckpt:
        ckpt.save(1, state, {"position": 1})
        ckpt.save(2, jax.tree.map(lambda x: x + 1 if x.dtype == jnp.float32 else x, state), {"position": 2})
    _corrupt_arrays(tmp_path, 2)
    capsys.readouterr()
    with Checkpointer(tmp_path) as ckpt:
        restored, data_state, step = ckpt.restore(abstract_state(state, _shardings(state, mesh)))
        assert ckpt.all_steps() == [1]
    assert step == 1 and data_state == {"position": 1}
    _equal(restored, state)
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, lines  # not the TensorStore spec, and said once
    assert "checkpoint step 2 is unreadable" in lines[0] and "corrupt" in lines[0]
    assert os.path.isdir(tmp_path / "corrupt" / "2" / "state")  # moved, nothing deleted
    assert not os.path.exists(tmp_path / "2")


def test_a_corrupt_step_no_longer_takes_a_keep_slot(tmp_path, capsys):
    """keep 2: after step 2 (corrupt) is set aside and step 3 saved, the good step 1 is still kept
    (before: the corrupt step counted as one of the two and step 1 was deleted)."""
    mesh = shd.make_mesh({"data": -1})
    state = _state(mesh)
    with Checkpointer(tmp_path, max_to_keep=2, async_save=False) as ckpt:
        ckpt.save(1, state, {"position": 1})
        ckpt.save(2, state, {"position": 2})
    _corrupt_arrays(tmp_path, 2)
    with Checkpointer(tmp_path, max_to_keep=2, async_save=False) as ckpt:
        assert ckpt.restore(abstract_state(state, _shardings(state, mesh)))[2] == 1
        ckpt.save(3, state, {"position": 3})
        assert ckpt.all_steps() == [1, 3]
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:  # a fresh process sees the same
        assert ckpt.all_steps() == [1, 3]
    assert os.path.isdir(tmp_path / "corrupt" / "2")


def test_unscored_saves_do_not_warn(tmp_path, caplog, capfd):
    """Saving without metrics while a best metric is tracked (periodic saves between evals) is
    deliberate: Orbax's 'Requested tracked_metric; did not provide metrics' is not printed."""
    mesh = shd.make_mesh({"data": -1})
    state = _state(mesh)
    with caplog.at_level("WARNING"):
        with Checkpointer(tmp_path, max_to_keep=2, best_metric="eval_loss", async_save=False) as ckpt:
            ckpt.save(1, state, None)
            ckpt.save(2, state, None, metrics={"eval_loss": 0.5})
            ckpt.save(3, state, None)
            assert ckpt.best_step() == 2
    out = capfd.readouterr()
    assert "tracked_metric" not in caplog.text + out.out + out.err


def test_restore_onto_a_different_mesh(tmp_path):
    mesh8 = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    mesh1 = shd.make_mesh({"data": 1}, jax.devices()[:1])
    state = _state(mesh8, seed=3)
    with Checkpointer(tmp_path / "a") as ckpt:
        ckpt.save(5, state, None)
    with Checkpointer(tmp_path / "a") as ckpt:
        on1, _, _ = ckpt.restore(abstract_state(state, _shardings(state, mesh1)))
    assert on1.params["w"].sharding.mesh.devices.size == 1
    _equal(on1, state)
    with Checkpointer(tmp_path / "b") as ckpt:  # and back: saved on 1 device, restored on 8
        ckpt.save(5, on1, None)
    with Checkpointer(tmp_path / "b") as ckpt:
        on8, _, _ = ckpt.restore(abstract_state(state, _shardings(state, mesh8)))
    assert on8.params["w"].sharding.spec == P("fsdp", "tensor")
    assert on8.params["w"].addressable_shards[0].data.shape == (4, 2)
    _equal(on8, state)
