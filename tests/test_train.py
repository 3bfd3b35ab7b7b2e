"""Exact resume: a run SIGKILLed between checkpoints and restarted reproduces the uninterrupted
run's per-step losses and final parameters bit for bit; the non-finite guard stops with the step."""

import json
import os
import re
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
    c.data.dataset = "synthetic"
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


def _tiny_synthetic(**overrides):
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny

    c = tiny.get_config()
    c.data.dataset = "synthetic"
    c.model.update(vocab_size=64, num_decoder_layers=1, num_encoder_layers=1)
    c.data.max_src_len = 8
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.mark.parametrize("checkpoint_every", [1, 100])
def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, checkpoint_every):
    from transformer_jax.train.synthetic import SyntheticIterator

    c = _tiny_synthetic(num_train_steps=6, checkpoint_every=checkpoint_every)
    c.optimizer.update(name="sgd", learning_rate=1e30, clip_norm=0.0)  # explodes after the first update
    c.schedule.update(name="constant")
    it = SyntheticIterator(global_batch_size=c.batch_size, max_len=8, vocab_size=64)
    with pytest.raises(loop.NonFiniteError, match=r"non-finite loss or gradient at step (\d+)") as err:
        loop.train(c, str(tmp_path / "run"), train_iter=it, progress=False)
    bad_step = int(str(err.value).split("at step ")[1].split()[0])
    assert bad_step >= 2
    with Checkpointer(tmp_path / "run" / "checkpoints") as ckpt:
        latest = ckpt.latest_step()
    if checkpoint_every == 1:
        assert latest == bad_step - 1  # the last good state; the bad one was never saved
        assert f"the last checkpoint (step {latest}) is intact" in str(err.value)
    else:
        assert latest is None
        assert "no checkpoint had been saved yet" in str(err.value) and "None" not in str(err.value)


class _Classification:
    """Classification-shaped batches (inputs, label) with get_state/set_state."""

    def __init__(self, batch, length, vocab=64, classes=2):
        self.batch, self.length, self.vocab, self.classes, self.position = batch, length, vocab, classes, 0

    def __next__(self):
        rng = np.random.default_rng(self.position)
        self.position += 1
        inputs = rng.integers(4, self.vocab, size=(self.batch, self.length)).astype(np.int32)
        return {"inputs": inputs, "label": rng.integers(0, self.classes, size=self.batch).astype(np.int32)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


@pytest.mark.parametrize("model_type,unit", [("transformer", "tokens"), ("encoder_classifier", "examples")])
def test_progress_lines_when_stdout_is_not_a_terminal(tmp_path, capsys, model_type, unit):
    """Off a TTY (here: captured), every log_every steps print step/total, loss, rate (tokens/s, or
    examples/s for classification) and ETA; no tqdm bar."""
    from transformer_jax.train.synthetic import SyntheticIterator

    c = _tiny_synthetic(num_train_steps=4, log_every=2, checkpoint_every=100, model_type=model_type)
    if model_type == "transformer":
        it = SyntheticIterator(global_batch_size=c.batch_size, max_len=8, vocab_size=64)
    else:
        c.model.update(num_decoder_layers=0, num_classes=2)
        it = _Classification(c.batch_size, 8)
    loop.train(c, str(tmp_path / "run"), train_iter=it)
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("step ")]
    pattern = rf"step (\d)/4 \| loss \d+\.\d{{4}} \| [\d,]+ {unit}/s \| ETA \d+:\d\d:\d\d"
    assert [re.fullmatch(pattern, line).group(1) for line in lines] == ["2", "4"], out.out
    assert "it/s" not in out.err  # no tqdm bar


def test_setup_failure_removes_a_workdir_it_created_and_keeps_an_existing_one(tmp_path):
    class Broken:
        def get_state(self):
            return {}

        def __next__(self):
            raise ValueError("no batches")

    c = _tiny_synthetic()
    with pytest.raises(ValueError, match="no batches"):
        loop.setup(c, str(tmp_path / "fresh"), train_iter=Broken())
    assert not os.path.exists(tmp_path / "fresh")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="no batches"):
        loop.setup(c, str(tmp_path / "old"), train_iter=Broken())
    assert (tmp_path / "old" / "keep.txt").read_text() == "x"


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """Ctrl-C (SIGINT) is handled like SIGTERM: the step in flight finishes, a checkpoint is saved,
    a message says how to resume, exit status 130, no KeyboardInterrupt traceback."""
    workdir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    args = [sys.executable, "-m", "transformer_jax.cli", "train", "--config", os.path.join(REPO, "configs", "tiny.py"),
            "--workdir", str(workdir), "--config.data.dataset=synthetic", "--config.model.vocab_size=64",
            "--config.data.max_src_len=8", "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
            "--config.num_train_steps=100000", "--config.checkpoint_every=100000", "--config.log_every=1"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 240
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 3/100000") or time.time() > deadline:
            break
    assert proc.poll() is None, "".join(seen) + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    out = "".join(seen) + out
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    saved = int(re.search(r"SIGINT: saved checkpoint at step (\d+); exiting", out).group(1))
    assert saved >= 3
    assert f"interrupted: saved the checkpoint of step {saved}" in err and "resume" in err
    with Checkpointer(workdir / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [saved]


# --- pretraining and fine-tuning -----------------------------------------------------------------

_TEXT_TINY = dict(d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1, num_decoder_layers=0, vocab_size=320,
                  max_len=32, dropout_rate=0.0)


def _text_config(name, data_dir, **overrides):
    import runpy

    c = runpy.run_path(os.path.join(REPO, "configs", name))["get_config"]()
    c.model.update(**_TEXT_TINY)
    c.data.update(vocab_size=300, max_src_len=32, max_tgt_len=32, data_dir=str(data_dir))
    c.update(batch_size=8, num_train_steps=2, log_every=1, eval_every=0, checkpoint_every=100, test_at_end=False)
    c.schedule.update(warmup_steps=1)
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.fixture(scope="module")
def mlm_workdir(tmp_path_factory):
    """A masked-LM run of 2 steps on the built-in corpus (the source of the fine-tuning tests)."""
    root = tmp_path_factory.mktemp("mlm")
    c = _text_config("mlm.py", root / "tfds", test_at_end=True)
    summary = loop.train(c, str(root / "run"), progress=False)
    assert {"accuracy", "perplexity"} <= set(summary["eval"])  # masked-token accuracy and perplexity
    return root


def _params(workdir):
    """(step, {path: array}) of a workdir's latest checkpoint, restored as init_from reads it."""
    from transformer_jax import sharding as shd
    from transformer_jax.train.warm_start import source_params

    mesh = shd.make_mesh(shd.resolve_mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, jax.device_count()))
    params, where = source_params(str(workdir), mesh)
    return int(where.split()[1]), {k: np.asarray(v) for k, v in params.items()}


def test_classifier_fine_tuned_from_a_masked_lm_loads_the_encoder_and_resumes_exactly(mlm_workdir, tmp_path, capsys):
    """init_from an MLM workdir (onto an fsdp mesh): encoder and embeddings loaded (layer 0 frozen
    here, so still equal after training), pooler and classifier fresh; the log and init_from.json name both sets; the run
    resumes from its own checkpoint (init_from ignored) and matches an uninterrupted run."""
    src = str(mlm_workdir / "run")
    c = _text_config("text_classifier.py", mlm_workdir / "tfds", init_from=src, freeze=("encoder/layer_0/.*",),
                     checkpoint_every=1)
    c.mesh.update(data=4, fsdp=2)  # loaded into the new state's shardings (the MLM ran on data=8)
    loop.train(c, str(tmp_path / "cut"), progress=False)
    out = capsys.readouterr().out
    assert "init_from" in out and "loaded" in out and "fresh parameters: classifier/bias" in out
    record = json.load(open(tmp_path / "cut" / "init_from.json"))
    assert sorted(record["fresh"]) == ["classifier/bias", "classifier/kernel", "pooler/bias", "pooler/kernel"]
    assert "encoder/embedding/embedding" in record["loaded"] and "encoder/layer_0/mlp/wi/kernel" in record["loaded"]
    _, mlm = _params(src)
    step, cls = _params(tmp_path / "cut")
    assert step == 2
    np.testing.assert_array_equal(cls["encoder/layer_0/mlp/wi/kernel"], mlm["encoder/layer_0/mlp/wi/kernel"])
    assert not np.array_equal(cls["encoder/embedding/embedding"], mlm["embedding/embedding"])  # not frozen: trained
    c.num_train_steps = 3
    loop.train(c, str(tmp_path / "cut"), progress=False)
    out = capsys.readouterr().out
    assert "resumed from checkpoint at step 2" in out and "init_from" not in out
    straight = _text_config("text_classifier.py", mlm_workdir / "tfds", init_from=src,
                            freeze=("encoder/layer_0/.*",), num_train_steps=3)
    straight.mesh.update(data=4, fsdp=2)
    loop.train(straight, str(tmp_path / "straight"), progress=False)
    (_, a), (_, b) = _params(tmp_path / "cut"), _params(tmp_path / "straight")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_init_from_with_other_shapes_names_the_parameters_and_leaves_no_workdir(mlm_workdir, tmp_path):
    c = _text_config("text_classifier.py", mlm_workdir / "tfds", init_from=str(mlm_workdir / "run"))
    c.model.d_ff = 48
    with pytest.raises(ValueError, match=r"config.init_from=.* decides the architecture \(.*config.pkl\), and the "
                                         r"experiment config contradicts it: config.model.d_ff=48, but the "
                                         r"checkpoint has 64"):
        loop.train(c, str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run")


def test_init_from_a_hugging_face_directory_into_a_classifier(tmp_path, capsys):
    """A BERT masked-LM directory (written by save_pretrained) starts an encoder classifier: the
    encoder (incl. the embeddings, found under the MLM's top-level name) is loaded; heads are fresh."""
    import dataclasses

    import flax.linen as nn
    from flax.traverse_util import flatten_dict

    import transformer_jax as tj

    from transformer_jax.train.experiment import model_section

    cfg = tj.TransformerConfig(vocab_size=64, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
                               num_decoder_layers=0, max_len=16, dropout_rate=0.0, position="learned",
                               activation="gelu", embed_scale=False, embed_norm=True, logits_bias=True,
                               type_vocab_size=2, norm_eps=1e-12, pooling="cls")
    mlm = tj.MaskedLM(cfg)
    variables = mlm.init(jax.random.PRNGKey(3), np.ones((1, 8), np.int32))
    tj.save_pretrained(mlm, variables, tmp_path / "hf")
    c = _tiny_synthetic(num_train_steps=1, model_type="encoder_classifier", init_from=str(tmp_path / "hf"),
                        freeze=("encoder/(layer_0|embedder)/.*",))
    c.model = model_section(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    loop.train(c, str(tmp_path / "run"), train_iter=_Classification(c.batch_size, 8), progress=False)
    assert "a Hugging Face checkpoint" in capsys.readouterr().out
    record = json.load(open(tmp_path / "run" / "init_from.json"))
    assert sorted(record["fresh"]) == ["classifier/bias", "classifier/kernel", "pooler/bias", "pooler/kernel"]
    assert "encoder/embedding/embedding" in record["loaded"]
    _, params = _params(tmp_path / "run")
    source = flatten_dict(nn.unbox(variables["params"]), sep="/")
    for name in ("encoder/layer_0/mlp/wi/kernel", "encoder/embedder/positions/pos_embedding"):
        np.testing.assert_array_equal(params[name], np.asarray(source[name]))


def test_decode_refuses_a_masked_lm_workdir_before_restoring(mlm_workdir):
    from transformer_jax import cli

    with pytest.raises(SystemExit, match=r"decode translates .* or continues prompts .*; config.data.dataset="
                                         r"'tjax_text' is a masked LM task"):
        cli.main(["decode", "--workdir", str(mlm_workdir / "run")])
