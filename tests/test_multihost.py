"""Two local processes (jax.distributed + gloo CPU collectives), each feeding half of the global
batch, give the same losses as one process with the same number of devices."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from transformer_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import os, sys
    workdir, devices, nproc, pid, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={{devices}}"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if nproc > 1:
        jax.distributed.initialize(coordinator_address=f"localhost:{{port}}", num_processes=nproc, process_id=pid)
    sys.path.insert(0, os.path.join({repo!r}, "configs"))
    import tiny
    from transformer_jax.train import loop

    c = tiny.get_config()
    c.data.dataset = "synthetic"
    c.model.update(vocab_size=64, num_encoder_layers=1, num_decoder_layers=1)
    c.data.max_src_len = 10
    c.mesh.update(data=-1)
    c.num_train_steps, c.checkpoint_every, c.log_every = 3, 3, 1
    loop.train(c, workdir, progress=False)
    print("process", jax.process_index(), "of", jax.process_count(), "done")
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    port = str(_free_port())
    multi = tmp_path / "two"
    procs = [subprocess.Popen([sys.executable, str(script), str(multi), "1", "2", str(i), port], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "2", "1", "0", "0"], env=env,
                            capture_output=True, text=True, timeout=300)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert "process 1 of 2 done" in "".join(outs)
    a, b = loop.read_metrics(str(tmp_path / "one")), loop.read_metrics(str(multi))
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        np.testing.assert_allclose(b[step]["loss"], a[step]["loss"], rtol=1e-6)
        assert b[step]["tokens"] == a[step]["tokens"]
    assert os.path.isdir(multi / "checkpoints" / "3")
