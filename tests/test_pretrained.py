"""Pretrained checkpoints against the reference implementation's own outputs.

The fixtures in tests/fixtures/pretrained were made by `make_fixtures.py` with torch and
transformers (versions in VERSIONS.txt); this file needs only safetensors and numpy.
"""

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import transformer_jax as tj
from transformer_jax.attention import BlockSparse, Windowed
from transformer_jax.model import Transformer

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
CASES = ["bert", "bert_mlm", "bert_cls", "gpt2", "gpt2_sharded", "t5", "t5_v11", "bart", "marian", "llama", "mistral"]
GENERATIVE = ["gpt2", "t5", "t5_v11", "bart", "marian", "llama", "mistral"]
ENCODER_ONLY = {"bert", "bert_mlm"}  # outputs per token: compared where the input is not padding


def reference(case):
    return dict(np.load(FIXTURES / case / "reference.npz"))


def apply(model, variables, ref):
    args = [ref["input_ids"]]
    if isinstance(model, Transformer):
        args.append(ref["decoder_input_ids"])
    kw = {"token_types": ref["token_type_ids"]} if "token_type_ids" in ref else {}
    return np.asarray(model.apply(variables, *args, **kw))


def relative_error(out, ref, where=None):
    diff = np.abs(out - ref)
    if where is not None:
        diff = diff[where]
    return float(diff.max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = tj.from_pretrained(FIXTURES / case)
        return cache[case]
    return get


@pytest.mark.parametrize("case", CASES)
def test_logits_match_reference(case, loaded):
    model, variables = loaded(case)
    ref = reference(case)
    out = apply(model, variables, ref)
    assert out.dtype == np.float32 and out.shape == ref["logits"].shape
    assert ref["logits"].std() > 0.5  # random weights large enough that tokens differ visibly
    # Padding rows of an encoder's per-token output are not defined (the reference computes them
    # from the row's real tokens; ours attend to nothing): compare the real tokens.
    where = ref["attention_mask"].astype(bool) if case in ENCODER_ONLY else None
    assert relative_error(out, ref["logits"], where) < 1e-4


@pytest.mark.parametrize("case", GENERATIVE)
def test_greedy_generation_matches_reference(case, loaded):
    model, variables = loaded(case)
    ref = reference(case)
    config = tj.load_generation_config(FIXTURES / case)
    tokens = np.asarray(tj.generate(model, variables, ref["input_ids"], max_new_tokens=8,
                                    generation_config=config))
    expected = ref["greedy"]
    if isinstance(model, Transformer):  # HF returns the start token first
        assert (expected[:, 0] == config.decoder_start_id).all()
        expected = expected[:, 1:]
    np.testing.assert_array_equal(tokens[:, :expected.shape[1]], expected)


def test_mistral_window_convention(loaded):
    """HF's sliding_window W shows a query itself and W - 1 earlier keys: our Windowed(W - 1)."""
    model, variables = loaded("mistral")
    window = json.loads((FIXTURES / "mistral" / "config.json").read_text())["sliding_window"]
    ref = reference("mistral")
    assert ref["input_ids"].shape[1] > window + 2  # long enough for the window to cut
    assert model.cfg.decoder_attention == Windowed(window - 1)
    wrong = type(model)(model.cfg.replace(decoder_attention=Windowed(window)))
    assert relative_error(apply(wrong, variables, ref), ref["logits"]) > 1e-2
    assert relative_error(apply(model, variables, ref), ref["logits"]) < 1e-4


@pytest.mark.parametrize("case", ["bert_mlm", "bert_cls", "gpt2", "t5_v11", "bart", "marian", "llama", "mistral"])
def test_save_then_load_is_identical(case, loaded, tmp_path):
    model, variables = loaded(case)
    tj.save_pretrained(model, variables, tmp_path / "out")
    model2, variables2 = tj.from_pretrained(tmp_path / "out")
    assert model2.cfg == model.cfg
    ref = reference(case)
    np.testing.assert_array_equal(apply(model2, variables2, ref), apply(model, variables, ref))
    names = set(load_file(tmp_path / "out" / "model.safetensors"))
    stored = set().union(*(load_file(f).keys() for f in (FIXTURES / case).glob("*.safetensors")))
    assert names <= stored | {"lm_head.weight"}  # the reference's own names


def test_save_without_equivalent_names_the_field(tmp_path):
    cfg = tj.tiny(num_decoder_layers=0, encoder_attention=BlockSparse(4, 3, 1, 1), type_vocab_size=2,
                  position="learned", embed_norm=True, embed_scale=False, pooling="cls")
    model = tj.EncoderClassifier(cfg)
    variables = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))
    with pytest.raises(ValueError, match="encoder_attention=BlockSparse"):
        tj.save_pretrained(model, variables, tmp_path / "out", family="bert")
    assert not (tmp_path / "out").exists()


def test_sharded_load_places_each_shard(loaded):
    """On 8 devices (fsdp 2 x tensor 4) every weight is created already split by the rules table."""
    mesh = tj.sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    model, variables = tj.from_pretrained(FIXTURES / "llama", mesh=mesh)
    kernel = variables["params"]["decoder"]["layer_0"]["mlp"]["wi"]["kernel"]  # [embed, mlp]
    assert len(kernel.sharding.device_set) == 8
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 4)
    single_model, single = loaded("llama")
    ref = reference("llama")
    with tj.sharding.activate(mesh):
        out = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, ref["input_ids"]))
    assert relative_error(out, apply(single_model, single, ref)) < 1e-5
    # 2 key/value heads do not split 4 ways: that dimension is replicated, the rest still sharded
    key = variables["params"]["decoder"]["layer_0"]["self_attention"]["key"]["kernel"]  # [D, K=2, H]
    assert key.addressable_shards[0].data.shape == (key.shape[0] // 2, 2, key.shape[2])


def test_tokenizers_match_reference():
    for case in ("gpt2", "t5", "marian"):
        ref = reference(case)
        tokenizer = tj.load_tokenizer(FIXTURES / case)
        ids = tokenizer.encode(str(ref["tok_text"]))
        assert ids == ref["tok_ids"].tolist(), case
        assert tokenizer.decode(ids) == str(ref["tok_decoded"]), case


# ---- bad input: each a clear error before anything compiles ---------------------------------------

def copy_case(case, tmp_path) -> Path:
    dst = tmp_path / case
    shutil.copytree(FIXTURES / case, dst)
    return dst


def edit_config(directory: Path, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def edit_tensors(directory: Path, fn):
    tensors = load_file(directory / "model.safetensors")
    fn(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tj.from_pretrained(tmp_path / "nowhere")
    d = copy_case("gpt2", tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        tj.from_pretrained(d)


def test_pytorch_bin_only_says_convert(tmp_path):
    d = tmp_path / "torch_only"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="safetensors only.*save_pretrained"):
        tj.from_pretrained(d)


def test_unsupported_architecture_lists_supported(tmp_path):
    d = copy_case("gpt2", tmp_path)
    edit_config(d, architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM.*supported:.*BertForMaskedLM.*T5ForConditionalGeneration"):
        tj.from_pretrained(d)


@pytest.mark.parametrize("case, field, value", [
    ("llama", "rope_scaling", {"rope_type": "llama3", "factor": 8.0}),
    ("t5", "feed_forward_proj", "gated-relu"),
    ("bert", "position_embedding_type", "relative_key"),
    ("gpt2", "scale_attn_by_inverse_layer_idx", True),
])
def test_unsupported_config_field_is_named(case, field, value, tmp_path):
    d = copy_case(case, tmp_path)
    edit_config(d, **{field: value})
    with pytest.raises(ValueError, match=field):
        tj.from_pretrained(d)


def test_wrong_shape_names_tensor_and_shapes(tmp_path):
    d = copy_case("gpt2", tmp_path)
    name = "transformer.h.0.mlp.c_fc.weight"
    d_model, d_ff = load_file(d / "model.safetensors")[name].shape
    edit_tensors(d, lambda t: t.update({name: t[name][:, :-1]}))
    with pytest.raises(ValueError, match=rf"{re.escape(name)}.*\({d_model}, {d_ff - 1}\).*\({d_model}, {d_ff}\)"):
        tj.from_pretrained(d)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    d = copy_case("llama", tmp_path)

    def change(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.9.extra.weight"] = np.zeros(3, np.float32)
    edit_tensors(d, change)
    with pytest.raises(ValueError, match=r"missing tensor\(s\): model\.layers\.1\.mlp\.up_proj\.weight.*"
                                         r"unexpected tensor\(s\): model\.layers\.9\.extra\.weight"):
        tj.from_pretrained(d)


def test_truncated_file(tmp_path):
    d = copy_case("bart", tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        tj.from_pretrained(d)


# ---- the command line -----------------------------------------------------------------------------

def test_cli_decode_pretrained_continues_and_translates(tmp_path, capsys):
    from transformer_jax import cli
    from transformer_jax.pretrained.text import generate_text

    lines = ["The quick brown fox", "reads books about music"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    for case, beam in (("gpt2", 1), ("t5", 2)):
        assert cli.main(["decode", "--pretrained", str(FIXTURES / case), "--input", str(tmp_path / "in.txt"),
                         "--max_new_tokens", "6", "--beam_size", str(beam)]) == 0
        printed = capsys.readouterr().out.splitlines()
        model, variables = tj.from_pretrained(FIXTURES / case)
        expected = generate_text(model, variables, tj.load_tokenizer(FIXTURES / case), lines,
                                 generation_config=tj.load_generation_config(FIXTURES / case),
                                 max_new_tokens=6, beam_size=beam)
        assert printed == expected and len(printed) == 2


@pytest.mark.parametrize("argv, message", [
    (["decode", "--pretrained", "/nonexistent/model"], "/nonexistent/model does not exist"),
    (["train", "--pretrained", "x", "--workdir", "w"], "--pretrained is for decode"),
    (["decode", "--pretrained", str(FIXTURES / "gpt2"), "--max_new_tokens", "-1"], "--max_new_tokens=-1"),
])
def test_cli_decode_pretrained_bad_input(argv, message):
    from transformer_jax import cli

    with pytest.raises(SystemExit, match=message):
        cli.main(argv)
