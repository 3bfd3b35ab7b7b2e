"""A checkpoint save that fails (disk full) and a restart with fewer kept checkpoints (issue 24,
item 12): one named error, no temporary directory left, the last good checkpoint intact, and
pruning to `keep_checkpoints` before the next save.

A full disk is made portably: a faked `shutil.disk_usage` for the check before a save, and
RLIMIT_FSIZE in a subprocess for a write that fails inside Orbax's threads (EFBIG, the same path
as ENOSPC: TensorStore's error in a background thread)."""

import asyncio
import collections
import errno
import gc
import logging
import os
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import checkpoint, cli
from transformer_jax.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
Usage = collections.namedtuple("Usage", "total used free")


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


def test_a_save_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        ckpt.save(1, _state(1))
        ckpt.wait()
        step_1 = checkpoint.disk_bytes(os.path.join(tmp_path, "1"))
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 700, 700))
        with pytest.raises(checkpoint.CheckpointSpaceError) as exc:
            ckpt.save(2, _state(2))
        assert ckpt.all_steps() == [1]
    message = str(exc.value)
    assert isinstance(exc.value, ValueError) and len(message.splitlines()) == 1
    assert str(tmp_path) in message and "step 2" in message and "the last complete checkpoint (step 1)" in message
    assert f"needs about {checkpoint._mb(int(step_1 * checkpoint.SPACE_MARGIN))}" in message, message
    assert "but 1 kB are free" in message, message  # 700 bytes
    assert sorted(os.listdir(tmp_path)) == ["1"]


RLIMIT_SCRIPT = """
import resource, signal, sys
import jax.numpy as jnp, numpy as np
from transformer_jax.checkpoint import Checkpointer, CheckpointSaveError
rng = np.random.default_rng(0)
state = {f"w{i}": jnp.asarray(rng.normal(size=(32, 32)), jnp.float32) for i in range(8)}
ckpt = Checkpointer(sys.argv[1], max_to_keep=3)
try:
    ckpt.save(1, state)
    ckpt.wait()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), the process lives
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    ckpt.save(2, state)  # asynchronous: its arrays fail in Orbax's writer threads
    ckpt.save(3, state)  # waits for step 2 first, and finds its failure
    ckpt.close()
except CheckpointSaveError as err:  # what the CLI does with it
    ckpt.close()
    sys.exit(f"error: {err}")
"""


def test_a_save_failing_in_orbax_threads_names_its_step_and_prints_nothing_else(tmp_path):
    """The failure of step 2's background writes surfaces when step 3 is saved: the error names step 2,
    and it is all that is printed (no Orbax traceback, no "Event loop is closed", no "never retrieved")."""
    directory = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", RLIMIT_SCRIPT, str(directory)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)  # pipes: RLIMIT_FSIZE does not cut them
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: "), proc.stderr
    message = proc.stderr
    assert "of step 2 " in message and "File too large (EFBIG)" in message, message
    assert "the last complete checkpoint (step 1) is intact" in message, message
    assert sorted(os.listdir(directory)) == ["1"]  # no temporary directory left


def test_train_on_a_full_disk_stops_with_one_error_line_and_resumes(tmp_path, monkeypatch, capsys):
    """The CLI end to end: the save of step 2 does not fit, one `error:` line and exit status 1;
    step 1 is intact and the same command (with space) resumes from it."""
    workdir = str(tmp_path / "run")
    argv = ["train", "--config", TINY, "--workdir", workdir, "--config.data.dataset=synthetic",
            "--config.model.vocab_size=64", "--config.data.max_src_len=8", "--config.num_train_steps=3",
            "--config.checkpoint_every=1", "--config.eval_every=0"]
    real = checkpoint.shutil.disk_usage
    calls = []

    def filling(path):  # room for the first save only
        calls.append(path)
        usage = real(path)
        return usage if len(calls) == 1 else Usage(usage.total, usage.total - 4096, 4096)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", filling)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    message = exc.value.code
    out = capsys.readouterr()
    assert isinstance(message, str) and message.startswith("error: saving the checkpoint of step 2 "), message
    assert len(message.splitlines()) == 1 and "Traceback" not in out.out + out.err, out.err
    assert "the last complete checkpoint (step 1) is intact" in message and "4 kB are free" in message, message
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", real)
    assert cli.main(argv) == 0
    assert "resumed from checkpoint at step 1" in capsys.readouterr().out
    assert checkpoint.committed_steps(os.path.join(workdir, "checkpoints"))[-1] == 3


def test_a_json_write_on_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    from transformer_jax.train import logs

    path = str(tmp_path / "budget.json")
    logs.write_json_atomic(path, {"budget_s": 60.0})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(logs.os, "fsync", full)
    with pytest.raises(OSError) as exc:
        logs.write_json_atomic(path, {"budget_s": 120.0})
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == path
    assert os.listdir(tmp_path) == ["budget.json"]  # no budget.json.tmp<pid> left
    assert '"budget_s": 60.0' in (tmp_path / "budget.json").read_text()


def test_train_with_metrics_on_a_full_disk_is_one_error_line(tmp_path, monkeypatch, capsys):
    from transformer_jax.train import logs

    def full(self, step, metrics):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(logs.MetricsWriter, "write", full)
    workdir = str(tmp_path / "run")
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--config", TINY, "--workdir", workdir, "--config.data.dataset=synthetic",
                  "--config.model.vocab_size=64", "--config.data.max_src_len=8", "--config.num_train_steps=2",
                  "--config.checkpoint_every=1", "--config.log_every=2", "--config.eval_every=0"])
    message = exc.value.code
    out = capsys.readouterr()
    assert isinstance(message, str) and len(message.splitlines()) == 1 and "Traceback" not in out.out + out.err
    assert message.startswith(f"error: writing in --workdir={workdir!r} failed: No space left on device (ENOSPC)")
    assert "the last checkpoint (step 1) is intact" in message, message


def _failed_save_with_writes_in_flight(errors: list) -> asyncio.Future:
    """Orbax's shape of a save: `gather` over writes; one fails at once, two end 50 ms later on their
    own threads (TensorStore's), waking the loop with `call_soon_threadsafe`."""
    async def write_later():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finish():
            time.sleep(0.05)
            try:
                loop.call_soon_threadsafe(done.set_exception, OSError(errno.ENOSPC, "No space left on device"))
            except RuntimeError as err:  # "Event loop is closed"
                errors.append(err)
        threading.Thread(target=finish).start()
        await done

    async def fail_now():
        raise OSError(errno.ENOSPC, "No space left on device")

    async def save():
        await asyncio.gather(fail_now(), write_later(), write_later())
    return save()


def test_orbax_event_loops_end_their_failed_writes_before_closing(tmp_path, caplog):
    from orbax.checkpoint._src import asyncio_utils

    Checkpointer(tmp_path, max_to_keep=1).close()
    assert asyncio_utils._run_sync_via_new_loop is checkpoint._drain_before_close
    errors: list = []
    with caplog.at_level(logging.ERROR, logger="asyncio"), pytest.raises(OSError):
        asyncio_utils.run_sync(_failed_save_with_writes_in_flight(errors))
    time.sleep(0.2)  # Orbax's own loop would be closed under both writes by now
    gc.collect()  # a failed task's error is logged as "never retrieved" when it is freed
    assert errors == [] and caplog.records == []
