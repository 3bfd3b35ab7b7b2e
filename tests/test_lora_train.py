"""LoRA in the training loop (config section `lora`, train/adapters.py): a classifier adapted from
a masked-LM base on 8 devices (data 2 × fsdp 2 × tensor 2) trains only its adapters and fresh
heads, keeps the base bit for bit, checkpoints adapters alone, resumes exactly after an
interruption, exports adapters that `merge_lora` folds back; bad settings are named errors
raised before anything compiles."""

import dataclasses
import json
import os
import signal
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import transformer_jax as tj
from transformer_jax import lora
from transformer_jax.train import loop, optim
from transformer_jax.train.experiment import model_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = tj.TransformerConfig(vocab_size=64, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
                            num_decoder_layers=0, max_len=16, dropout_rate=0.1, position="learned",
                            activation="gelu", embed_scale=False, embed_norm=True, logits_bias=True,
                            type_vocab_size=2, pooling="cls")


class Batches:
    """Classification batches (inputs, label) with get_state/set_state; `stop_at`: send this process
    SIGTERM while fetching that batch (the loop saves after the step and returns: an interruption)."""

    def __init__(self, batch=8, length=8, stop_at=None):
        self.batch, self.length, self.stop_at, self.position = batch, length, stop_at, 0

    def __next__(self):
        if self.position == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        rng = np.random.default_rng(self.position)
        self.position += 1
        return {"inputs": rng.integers(4, 64, size=(self.batch, self.length)).astype(np.int32),
                "label": rng.integers(0, 2, size=self.batch).astype(np.int32)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _save_base(path, seed):
    mlm = tj.MaskedLM(BASE)
    variables = mlm.init(jax.random.PRNGKey(seed), np.ones((1, 8), np.int32))
    tj.save_pretrained(mlm, variables, path)
    return flatten_dict(nn.unbox(variables["params"]), sep="/")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A masked-LM Hugging Face directory (what a pretraining run would leave)."""
    path = tmp_path_factory.mktemp("base") / "hf"
    return str(path), _save_base(path, seed=3)


def _config(init_from, num_train_steps=5, **lora_values):
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny

    c = tiny.get_config()
    c.data.dataset, c.model_type, c.init_from = "synthetic", "encoder_classifier", init_from
    c.model = model_section(**{f.name: getattr(BASE, f.name) for f in dataclasses.fields(BASE)})
    c.mesh.update(data=2, fsdp=2, tensor=2)
    c.update(num_train_steps=num_train_steps, checkpoint_every=2, log_every=1, eval_every=0)
    c.optimizer.update(learning_rate=1e-2, weight_decay=0.01)
    c.lora.update(rank=4, alpha=8.0, targets=("query", "value", "wi"))
    c.lora.update(**lora_values)
    return c


def test_lora_run_trains_adapters_and_heads_only_and_resumes_exactly(base, tmp_path, capsys):
    hf, source = base
    cut, straight = str(tmp_path / "cut"), str(tmp_path / "straight")
    first = loop.train(_config(hf), cut, train_iter=Batches(stop_at=2), progress=False)
    out = capsys.readouterr().out
    assert first["preempted"] and first["step"] == 3  # interrupted between checkpoints (2, 4)
    assert "lora: rank 4, alpha 8, targets query, value, wi on 3 projections; trainable" in out
    assert "trained in full (classifier/bias, classifier/kernel, pooler/bias, pooler/kernel)" in out
    assert "frozen" in out and "fresh parameters: classifier/bias" in out
    resumed = loop.train(_config(hf), cut, train_iter=Batches(), progress=False)
    assert "resumed from checkpoint at step 3" in capsys.readouterr().out
    whole = loop.train(_config(hf), straight, train_iter=Batches(), progress=False)

    a, b = resumed["state"], whole["state"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params), jax.device_get(b.params))
    losses = lambda w: [r["loss"] for _, r in sorted(loop.read_metrics(w).items())]  # noqa: E731
    assert losses(cut) == losses(straight) and len(set(losses(cut))) == 5

    # the base is the loaded source, untouched; heads and adapters trained; optimiser state theirs
    frozen = flatten_dict(jax.device_get(a.frozen), sep="/")
    for name in ("encoder/layer_0/mlp/wi/kernel", "encoder/embedding/embedding"):
        src = source.get(name, source.get(name.replace("encoder/", "", 1)))
        np.testing.assert_array_equal(frozen[name], src)
    trained = flatten_dict(jax.device_get(a.params), sep="/")
    assert set(trained) == {"classifier/bias", "classifier/kernel", "pooler/bias", "pooler/kernel",
                            *(f"encoder/layer_0/{p}/{f}" for p in ("self_attention/query", "self_attention/value",
                                                                   "mlp/wi") for f in "ab")}
    assert not np.array_equal(trained["classifier/kernel"], frozen["classifier/kernel"])
    assert np.abs(trained["encoder/layer_0/mlp/wi/b"]).max() > 0  # B starts at zero
    assert optim.state_size(a.opt_state) == 2 * lora.adapter_count(a.params)  # Adam's two moments
    # placed like their kernels on the 2x2x2 mesh
    assert tuple(a.params["encoder"]["layer_0"]["mlp"]["wi"]["a"].sharding.spec) == ("fsdp", None)
    assert tuple(a.frozen["encoder"]["layer_0"]["mlp"]["wi"]["kernel"].sharding.spec) == ("fsdp", "tensor")

    # checkpoints hold the adapters alone; the export folds back into the base with merge_lora
    assert _saved(os.path.join(cut, "checkpoints"), 5) == {"step", "params", "opt_state", "rng"}
    adapters, cfg = lora.load_adapters(os.path.join(cut, "adapters"))
    assert cfg == lora.LoraConfig(rank=4, alpha=8.0, targets=("query", "value", "wi"))
    merged = lora.merge_lora(jax.device_get(a.frozen), adapters, cfg)
    want = lora.merge_lora(jax.device_get(a.frozen), jax.device_get(a.params), cfg)
    jax.tree.map(np.testing.assert_array_equal, merged, want)
    record = json.load(open(os.path.join(cut, "lora.json")))
    assert record["trainable"] == lora.adapter_count(a.params) and record["model"] == tj.param_count(a.frozen)
    assert record["frozen"] == record["model"] - record["trained_in_full"] > 0

    # resuming with other LoRA settings, or over another base, is refused before compiling
    with pytest.raises(ValueError, match="config.lora: this workdir's checkpoints were written with"):
        loop.train(_config(hf, num_train_steps=6, rank=2), cut, train_iter=Batches(), progress=False)
    _save_base(hf, seed=4)
    with pytest.raises(ValueError, match=r"the base parameters differ .* hold adapters only"):
        loop.train(_config(hf, num_train_steps=6), cut, train_iter=Batches(), progress=False)


@pytest.mark.parametrize("change,message", [
    (dict(targets=("nothing",)), r"lora.targets=\('nothing',\) match no projection of this model; its "
                                 r"projections are classifier, .*query"),
    (dict(targets=("classifier",)), r"match only projections trained in full \(classifier: init_from leaves"),
    (dict(rank=-1), r"lora.rank must be a positive integer \(0 turns LoRA off\); got -1"),
    (dict(alpha=0.0), r"lora.alpha must be a positive number; got 0.0"),
    ("freeze", r"config.freeze=\('encoder/.\*',\) with config.lora.rank=4: LoRA already freezes"),
    ("d_ff", r"config.model.d_ff=48, but the checkpoint has 64"),
])
def test_bad_lora_settings_are_named_errors_before_compiling(base, tmp_path, change, message):
    c = _config(base[0])
    if change == "freeze":
        c.freeze = ("encoder/.*",)
    elif change == "d_ff":
        c.model.d_ff = 48  # the model does not fit the init_from checkpoint
    else:
        c.lora.update(**change)
    with pytest.raises(ValueError, match=message):
        loop.train(c, str(tmp_path / "run"), train_iter=Batches(), progress=False)
    assert not os.path.exists(tmp_path / "run")



def _saved(checkpoints: str, step: int) -> set[str]:
    """The top-level fields of the train state whose arrays a checkpoint step holds (Orbax's metadata)."""
    with open(os.path.join(checkpoints, str(step), "state", "_METADATA")) as f:
        tree = json.load(f)["tree_metadata"]
    return {v["key_metadata"][0]["key"] for v in tree.values() if v["value_metadata"]["value_type"] != "None"}


def test_checkpoints_hold_the_base_only_when_asked_and_restore_it_sharded(tmp_path):
    """lora.save_adapters_only=True: the base is left out of the files and put back on restore;
    False: it is written and restored like the rest. Either way onto the state's shardings."""
    import optax

    from transformer_jax import sharding as shd
    from transformer_jax.train import build
    from transformer_jax.train.state import abstract_state, create_train_state

    model = tj.EncoderClassifier(BASE)
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shapes = {"inputs": jax.ShapeDtypeStruct((8, 8), np.int32), "label": jax.ShapeDtypeStruct((8,), np.int32)}
    state, shardings = create_train_state(model, optax.adam(1e-3), shapes, mesh, lora=lora.LoraConfig(rank=2),
                                          full=("classifier/kernel",))
    assert set(state.params["classifier"]) == {"kernel"} and "a" in state.params["encoder"]["layer_0"][
        "self_attention"]["query"]
    for adapters_only in (True, False):
        workdir = str(tmp_path / str(adapters_only))
        with build.checkpointer(_config("", save_adapters_only=adapters_only), workdir, base=state.frozen) as ckpt:
            ckpt.save(1, state, {"position": 1})
            ckpt.wait()
            restored, data, step = ckpt.restore(abstract_state(state, shardings))
        fields = _saved(os.path.join(workdir, "checkpoints"), 1)
        assert fields == {"step", "params", "opt_state", "rng"} | (set() if adapters_only else {"frozen"})
        assert step == 1 and data == {"position": 1}
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            np.testing.assert_array_equal(got, want)
            assert got.sharding == want.sharding
