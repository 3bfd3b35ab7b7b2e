"""Model directories that hold more than one model's files (issue 24, items 1 and 11): a save never
brings old weights back, a directory with both weight layouts is refused by name, an index that
disagrees with its shards is named before any tensor is read, and broken config files are named."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax.pretrained import checkpoint_files

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"


def copy_case(case, tmp_path, name=None) -> Path:
    dst = tmp_path / (name or case)
    shutil.copytree(FIXTURES / case, dst)
    return dst


@pytest.fixture(scope="module")
def gpt2():
    return tj.from_pretrained(FIXTURES / "gpt2")


def _perturbed(variables):
    """Other weights of the same shapes (so a stale file cannot pass for the saved one)."""
    leaves, tree = jax.tree.flatten(variables)
    rng = np.random.default_rng(0)
    return jax.tree.unflatten(tree, [x + rng.normal(0, 0.1, x.shape).astype(x.dtype) for x in leaves])


def _logits(model, variables):
    ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size, (2, 7))
    return np.asarray(model.apply(variables, ids))


def test_save_over_a_sharded_checkpoint_removes_the_old_weights(gpt2, tmp_path):
    model, variables = gpt2
    d = copy_case("gpt2_sharded", tmp_path)
    (d / "model-00009-of-00009.safetensors").write_bytes(b"stray")
    new = _perturbed(variables)
    tj.save_pretrained(model, new, d)
    left = sorted(p.name for p in d.iterdir() if "safetensors" in p.name)
    assert left == ["model.safetensors"], left
    model2, loaded = tj.from_pretrained(d)
    np.testing.assert_array_equal(_logits(model2, loaded), _logits(model, new))


def test_save_removes_stale_generation_config_and_tokenizer_files(gpt2, tmp_path):
    model, variables = gpt2
    d = copy_case("t5", tmp_path)  # another model's generation config and tokenizer
    t5_generation = (d / "generation_config.json").read_text()
    tj.save_pretrained(model, variables, d)
    for name in ("spiece.model", "tokenizer_config.json"):
        assert not (d / name).exists(), name
    # a causal LM's save writes its own generation config (from its config.json ids), never T5's
    assert (d / "generation_config.json").read_text() != t5_generation
    assert (d / "reference.npz").exists()  # files that are not a model's are left alone
    tj.save_pretrained(model, variables, d, generation_config={"eos_token_id": 3})
    assert json.loads((d / "generation_config.json").read_text()) == {"eos_token_id": 3}


def test_stale_file_removal_is_crash_safe(gpt2, tmp_path, monkeypatch):
    """A save that dies after writing the new weights leaves the old layout's index, which loading
    then refuses by name (never picks the old weights silently); saving again repairs it."""
    model, variables = gpt2
    d = copy_case("gpt2_sharded", tmp_path)

    def die(*args, **kwargs):
        raise OSError("killed mid-save")
    monkeypatch.setattr(checkpoint_files, "_unlink", die)
    with pytest.raises(OSError, match="killed"):
        tj.save_pretrained(model, variables, d)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="both.*model.safetensors.*model.safetensors.index.json"):
        tj.from_pretrained(d)
    tj.save_pretrained(model, variables, d)
    tj.from_pretrained(d)


def test_both_layouts_is_a_named_error(tmp_path):
    d = copy_case("gpt2_sharded", tmp_path)
    shutil.copy(FIXTURES / "gpt2" / "model.safetensors", d / "model.safetensors")
    with pytest.raises(ValueError, match=r"both model\.safetensors and model\.safetensors\.index\.json"):
        tj.from_pretrained(d)


# ---- an index that disagrees with its shards --------------------------------------------------------

def _edit_index(d: Path, fn):
    index = json.loads((d / "model.safetensors.index.json").read_text())
    fn(index["weight_map"])
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def test_index_omitting_a_stored_tensor_is_named(tmp_path):
    d = copy_case("gpt2_sharded", tmp_path)
    name = "transformer.h.1.mlp.c_fc.weight"
    _edit_index(d, lambda m: m.pop(name))
    with pytest.raises(ValueError, match=rf"index\.json.*{name.replace('.', '[.]')}.*model-0000\d-of-00003"):
        tj.from_pretrained(d)


def test_index_mapping_a_tensor_to_the_wrong_shard_is_named(tmp_path):
    d = copy_case("gpt2_sharded", tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    name = "transformer.h.1.mlp.c_fc.weight"
    wrong = next(f for f in sorted(set(index.values())) if f != index[name])
    _edit_index(d, lambda m: m.update({name: wrong}))
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}.*{wrong}.*{index[name]}"):
        tj.from_pretrained(d)


# ---- config.json: missing fields, not an object, not UTF-8 --------------------------------------------

def _config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


@pytest.mark.parametrize("case, field", [("gpt2", "n_embd"), ("bert", "hidden_size"), ("t5", "d_model"),
                                         ("llama", "num_attention_heads"), ("bart", "encoder_layers")])
def test_config_missing_required_field_names_file_and_field(case, field, tmp_path):
    d = copy_case(case, tmp_path)
    hf = _config(d)
    del hf[field]
    (d / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=rf"config\.json.*{field}"):
        tj.from_pretrained(d)


def test_config_as_a_list_is_named(tmp_path):
    d = copy_case("gpt2", tmp_path)
    (d / "config.json").write_text(json.dumps([_config(d)]))
    with pytest.raises(ValueError, match=r"config\.json.*JSON object.*list"):
        tj.from_pretrained(d)


def test_config_not_utf8_is_named(tmp_path):
    d = copy_case("gpt2", tmp_path)
    (d / "config.json").write_bytes((d / "config.json").read_bytes().replace(b'"gpt2"', b'"gpt\xff2"'))
    with pytest.raises(ValueError, match=r"config\.json.*UTF-8"):
        tj.from_pretrained(d)


def test_config_field_of_the_wrong_type_is_named(tmp_path):
    d = copy_case("gpt2", tmp_path)
    hf = _config(d)
    hf["n_layer"] = "two"
    (d / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"config\.json"):
        tj.from_pretrained(d)


def test_type_vocab_size_zero_is_named(tmp_path):
    d = copy_case("bert", tmp_path)
    hf = _config(d)
    hf["type_vocab_size"] = 0
    (d / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"type_vocab_size.*0"):
        tj.from_pretrained(d)


def test_mistral_sliding_window_zero_is_named(tmp_path):
    d = copy_case("mistral", tmp_path)
    hf = _config(d)
    hf["sliding_window"] = 0
    (d / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"config\.json.*sliding_window=0.*positive"):
        tj.from_pretrained(d)



# ---- tensors and overrides that would change the model in silence ---------------------------------

def _edit_single(d: Path, fn):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    fn(tensors)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_integer_or_bool_weights_are_named(dtype, tmp_path):
    d = copy_case("gpt2", tmp_path)
    name = "transformer.h.0.mlp.c_fc.bias"
    _edit_single(d, lambda t: t.update({name: (t[name] * 0).astype(dtype)}))
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}.*{np.dtype(dtype).name}.*floating"):
        tj.from_pretrained(d)


def test_nan_weights_are_named(tmp_path):
    d = copy_case("gpt2", tmp_path)
    name = "transformer.h.1.attn.c_proj.weight"

    def poison(t):
        t[name] = t[name].copy()
        t[name][2, 3] = np.nan
    _edit_single(d, poison)
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}.*1 non-finite"):
        tj.from_pretrained(d)


@pytest.mark.parametrize("override", [dict(num_heads=1), dict(decoder_attention="Windowed"),
                                      dict(norm_eps=1e-3), dict(tie_output=False)])
def test_overrides_that_change_the_logits_are_named(override, tmp_path):
    from transformer_jax.attention import Windowed

    if override.get("decoder_attention") == "Windowed":
        override = dict(decoder_attention=Windowed(2))
    field = next(iter(override))
    with pytest.raises(ValueError, match=rf"{field}=.*changes what the checkpoint computes"):
        tj.from_pretrained(FIXTURES / "gpt2", **override)


def test_overrides_that_keep_the_logits_load(gpt2):
    from transformer_jax.attention import Flash

    model, variables = gpt2
    model2, variables2 = tj.from_pretrained(FIXTURES / "gpt2", dropout_rate=0.0, decoder_attention=Flash(),
                                            max_len=model.cfg.max_len)
    np.testing.assert_allclose(_logits(model2, variables2), _logits(model, variables), rtol=1e-4, atol=1e-4)
