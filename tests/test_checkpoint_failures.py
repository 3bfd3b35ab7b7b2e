"""A checkpoint save that fails (disk full) and a restart with fewer kept checkpoints (issue 24,
item 12): one named error, no temporary directory left, the last good checkpoint intact, and
pruning to `keep_checkpoints` before the next save."""

import errno
import os

import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import checkpoint
from transformer_jax.checkpoint import Checkpointer


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), "step": jnp.asarray(seed, jnp.int32)}


def test_prune_keeps_the_latest_and_the_best_before_the_next_save(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=5, best_metric="eval_loss", async_save=False) as ckpt:
        for step, loss in {1: 0.9, 2: 0.1, 3: 0.7, 4: 0.8, 5: 0.6}.items():
            ckpt.save(step, _state(step), metrics={"eval_loss": loss})
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="eval_loss", async_save=False) as ckpt:
        assert ckpt.all_steps() == [1, 2, 3, 4, 5]  # opening deletes nothing (eval opens too)
        assert ckpt.prune() == [1, 3]
        assert ckpt.all_steps() == [2, 4, 5]
    assert sorted(int(n) for n in os.listdir(tmp_path) if n.isdigit()) == [2, 4, 5]


def test_a_failed_save_is_one_named_error_and_leaves_no_tmp_dir(tmp_path, monkeypatch):
    with Checkpointer(tmp_path, max_to_keep=3, async_save=False) as ckpt:
        ckpt.save(1, _state(1))
        real_save = type(ckpt._manager).save

        def full_disk(manager, step, *args, **kwargs):
            os.makedirs(os.path.join(tmp_path, f"{step}.orbax-checkpoint-tmp-1234"))
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(type(ckpt._manager), "save", full_disk)
        with pytest.raises(checkpoint.CheckpointSaveError) as exc:
            ckpt.save(2, _state(2))
        monkeypatch.setattr(type(ckpt._manager), "save", real_save)
    message = str(exc.value)
    assert isinstance(exc.value, ValueError) and len(message.splitlines()) == 1
    assert "step 2" in message and "No space left on device" in message and "step 1" in message
    assert sorted(os.listdir(tmp_path)) == ["1"]
