"""Exact resume: a run SIGKILLed between checkpoints and restarted reproduces the uninterrupted
run's per-step losses and final parameters bit for bit; the non-finite guard stops with the step."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from transformer_jax.checkpoint import Checkpointer
from transformer_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import os, sys, time
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    sys.path.insert(0, os.path.join({repo!r}, "configs"))
    import tiny
    from transformer_jax.train import loop
    from transformer_jax.train.synthetic import SyntheticIterator

    workdir, hang_at = sys.argv[1], int(sys.argv[2])

    class HangingIterator(SyntheticIterator):
        def __next__(self):
            if self.position == hang_at:  # signal the test, then wait to be killed
                done = os.path.join(workdir, "checkpoints", "3", "commit_success.txt")
                for _ in range(600):  # let the asynchronous save of step 3 commit first
                    if os.path.exists(done):
                        break
                    time.sleep(0.1)
                open(os.path.join(workdir, "hanging"), "w").close()
                time.sleep(600)
            return super().__next__()

    c = tiny.get_config()
    c.data.task = "synthetic"
    c.model.update(vocab_size=64, dropout_rate=0.1)  # dropout on: the rng must resume too
    c.data.max_src_len = 12
    c.mesh.update(data=1, fsdp=2)
    c.num_train_steps, c.checkpoint_every, c.log_every = 8, 3, 1
    c.optimizer.update(name="adamw", weight_decay=0.01, learning_rate=3e-3)
    it = HangingIterator(global_batch_size=c.batch_size, max_len=12, vocab_size=64, seed=c.seed)
    loop.train(c, workdir, train_iter=it, progress=False)
""")


def _run(script, workdir, hang_at, *, kill=False):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    proc = subprocess.Popen([sys.executable, script, str(workdir), str(hang_at)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not kill:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        return out
    marker = os.path.join(workdir, "hanging")
    deadline = time.time() + 300
    while not os.path.exists(marker):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    os.remove(marker)
    return None


def _final_params(workdir):
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        step = ckpt.latest_step()
        # Restore without a target: the saved arrays, exactly as written.
        import orbax.checkpoint as ocp
        restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return step, jax.tree.map(np.asarray, restored["params"])


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_is_bitwise_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(script, straight, hang_at=-1)
    _run(script, killed, hang_at=5, kill=True)  # after steps 1..5; checkpoint at 3 only
    with Checkpointer(killed / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [3]
    out = _run(script, killed, hang_at=-1)
    assert "resumed from checkpoint at step 3" in out

    a, b = loop.read_metrics(straight), loop.read_metrics(killed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert a[step]["loss"] == b[step]["loss"], (step, a[step]["loss"], b[step]["loss"])
        assert a[step]["grad_norm"] == b[step]["grad_norm"]
    step_a, params_a = _final_params(straight)
    step_b, params_b = _final_params(killed)
    assert step_a == step_b == 8
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert len({a[s]["loss"] for s in a}) == 8  # the losses do change from step to step


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    from transformer_jax.train.synthetic import SyntheticIterator
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny

    c = tiny.get_config()
    c.data.task = "synthetic"
    c.model.update(vocab_size=64, num_decoder_layers=1, num_encoder_layers=1)
    c.data.max_src_len = 8
    c.num_train_steps, c.checkpoint_every = 6, 1
    c.optimizer.update(name="sgd", learning_rate=1e30, clip_norm=0.0)  # explodes after the first update
    c.schedule.update(name="constant")
    it = SyntheticIterator(global_batch_size=c.batch_size, max_len=8, vocab_size=64)
    with pytest.raises(loop.NonFiniteError, match=r"non-finite loss or gradient at step (\d+)") as err:
        loop.train(c, str(tmp_path / "run"), train_iter=it, progress=False)
    bad_step = int(str(err.value).split("at step ")[1].split()[0])
    assert bad_step >= 2
    with Checkpointer(tmp_path / "run" / "checkpoints") as ckpt:
        assert ckpt.latest_step() == bad_step - 1  # the last good state; the bad one was never saved
