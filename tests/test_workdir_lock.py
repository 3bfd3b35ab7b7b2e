"""One trainer per workdir (issue 24, item 2): the second refuses with one `error:` line naming the
holder (pid and host); a lock left by a killed process does not block the restart. SIGTERM saves
and exits 143 (item 13), so a scheduler sees a preempted job, not a finished one."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from transformer_jax import cli
from transformer_jax.train import lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(workdir, pid, host=None):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, lock.LOCK), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00Z"}, f)


def _holder(workdir):
    with open(os.path.join(workdir, lock.LOCK)) as f:
        return json.load(f)


def test_a_live_holder_is_named(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, sleeper.pid)
        with pytest.raises(lock.WorkdirLocked, match=rf"in use by another trainer: pid {sleeper.pid} on this host"):
            lock.acquire(tmp_path)
        assert _holder(tmp_path)["pid"] == sleeper.pid  # left as it was
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_holder_on_another_host_is_named_and_never_taken_over(tmp_path):
    _write_lock(tmp_path, _dead_pid(), host="node-17")
    with pytest.raises(lock.WorkdirLocked, match=r"host 'node-17'.*remove the lock file"):
        lock.acquire(tmp_path)


@pytest.mark.parametrize("content", ["dead", "garbage", "empty"])
def test_a_stale_lock_is_taken_over_and_released(tmp_path, content):
    if content == "dead":
        _write_lock(tmp_path, _dead_pid())
    else:
        (tmp_path / lock.LOCK).write_text("" if content == "empty" else "{not json")
    path = lock.acquire(tmp_path)
    assert _holder(tmp_path)["pid"] == os.getpid()
    lock.release(path)
    assert sorted(os.listdir(tmp_path)) == []  # no lock, no tmp or stale files left


def test_train_refuses_a_locked_workdir_before_writing(tmp_path, capsys):
    workdir = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(workdir, sleeper.pid)
        with pytest.raises(SystemExit) as exc:
            cli.main(["train", "--config", TINY, "--workdir", str(workdir), "--config.data.dataset=synthetic",
                      "--config.model.vocab_size=64", "--config.data.max_src_len=8", "--config.num_train_steps=2"])
    finally:
        sleeper.kill()
        sleeper.wait()
    message = exc.value.code
    assert message.startswith("error: ") and len(message.splitlines()) == 1, message
    assert f"pid {sleeper.pid}" in message and "this host" in message and lock.LOCK in message
    assert os.listdir(workdir) == [lock.LOCK]  # no config, metrics or checkpoints written
    assert "Traceback" not in "".join(capsys.readouterr())


def test_second_trainer_refuses_and_sigterm_exits_143(tmp_path):
    """Two real `train` processes: the second exits 1 naming the first; the first, sent SIGTERM,
    saves a checkpoint, removes its lock and exits 143 (128 + SIGTERM)."""
    workdir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    args = [sys.executable, "-m", "transformer_jax.cli", "train", "--config", TINY, "--workdir", str(workdir),
            "--config.data.dataset=synthetic", "--config.model.vocab_size=64", "--config.data.max_src_len=8",
            "--config.num_train_steps=100000", "--config.checkpoint_every=100000", "--config.log_every=1"]
    first = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = [], time.time() + 240
    for line in first.stdout:
        seen.append(line)
        if line.startswith("step 2/100000") or time.time() > deadline:
            break
    assert first.poll() is None, "".join(seen) + first.stderr.read()
    second = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert second.returncode == 1, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"pid {first.pid} on this host" in errors[0], second.stderr
    assert "Traceback" not in second.stderr + err
    assert first.returncode == 143, err
    assert re.search(r"SIGTERM: saved checkpoint at step \d+", "".join(seen) + out)
    assert not (workdir / lock.LOCK).exists()
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "loss" in m]
    assert steps == sorted(set(steps))  # one run's lines, not two interleaved
