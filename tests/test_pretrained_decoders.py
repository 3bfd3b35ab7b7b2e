"""Qwen3, Gemma 3 (text) and ViT checkpoints against the reference implementation's own outputs.

The fixtures were made by tests/fixtures/pretrained/make_fixtures_decoders.py (torch +
transformers, versions in each reference.npz); this file needs only numpy and safetensors.
"""

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import transformer_jax as tj
from transformer_jax.attention import Dense, Windowed

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
CAUSAL = ["qwen3", "gemma3"]


def reference(case):
    return dict(np.load(FIXTURES / case / "reference.npz"))


def relative_error(out, ref):
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = tj.from_pretrained(FIXTURES / case)
        return cache[case]
    return get


def logits_of(model, variables, ref):
    return np.asarray(model.apply(variables, ref["input_ids"], ref["attention_mask"], method="forward")["logits"])


@pytest.mark.parametrize("case", CAUSAL)
def test_causal_logits_match_reference(case, loaded):
    model, variables = loaded(case)
    ref = reference(case)
    out = logits_of(model, variables, ref)
    assert out.shape == ref["logits"].shape and ref["logits"].std() > 0.5
    assert relative_error(out, ref["logits"]) < 1e-4


@pytest.mark.parametrize("case", CAUSAL)
def test_greedy_tokens_match_reference(case, loaded):
    """The cached decode path (q/k norms, per-layer rotary bases, windowed ring buffers,
    softcapped logits) makes the reference's greedy choices."""
    model, variables = loaded(case)
    ref = reference(case)
    config = tj.load_generation_config(FIXTURES / case)
    tokens = np.asarray(tj.generate(model, variables, ref["input_ids"], max_new_tokens=8,
                                    generation_config=config))
    np.testing.assert_array_equal(tokens[:, :ref["greedy"].shape[1]], ref["greedy"])


def test_gemma3_config_maps_every_feature(loaded):
    model, _ = loaded("gemma3")
    hf = json.loads((FIXTURES / "gemma3" / "config.json").read_text())
    cfg = model.cfg
    window = hf["sliding_window"]
    assert reference("gemma3")["input_ids"].shape[1] > window + 2  # the window cuts
    assert cfg.decoder_specs == (Windowed(window - 1), Dense(), Windowed(window - 1))
    assert (cfg.rotary_base, cfg.rotary_local_base) == (1e6, 1e4)
    assert cfg.attention_scale == pytest.approx(hf["query_pre_attn_scalar"] ** -0.5)
    assert (cfg.qk_norm, cfg.sandwich_norm, cfg.norm_scale_offset, cfg.embed_scale) == (True, True, 1.0, True)
    assert cfg.logits_softcap == hf["final_logit_softcapping"] and cfg.activation == "geglu_tanh"


@pytest.mark.parametrize("change", [
    dict(decoder_attention=Dense()),  # every layer global
    dict(rotary_local_base=None),  # one rotary base for all layers
    dict(logits_softcap=None),
    dict(attention_scale=None),  # head_dim^-0.5 instead of query_pre_attn_scalar^-0.5
])
def test_gemma3_each_feature_matters(change, loaded):
    """Each mapped feature changes the logits: the fixture would catch it being dropped."""
    model, variables = loaded("gemma3")
    ref = reference("gemma3")
    wrong = type(model)(model.cfg.replace(**change))
    assert relative_error(logits_of(wrong, variables, ref), ref["logits"]) > 1e-3


@pytest.mark.parametrize("case", CAUSAL + ["vit", "vit_cls"])
def test_save_then_load_is_identical(case, loaded, tmp_path):
    model, variables = loaded(case)
    tj.save_pretrained(model, variables, tmp_path / "out")
    model2, variables2 = tj.from_pretrained(tmp_path / "out")
    assert type(model2) is type(model) and model2.cfg == model.cfg
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), variables, variables2))
    names = set(load_file(tmp_path / "out" / "model.safetensors"))
    assert names == set(load_file(FIXTURES / case / "model.safetensors"))  # the reference's own names
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    original = json.loads((FIXTURES / case / "config.json").read_text())
    for key in ("model_type", "architectures", "layer_types", "sliding_window", "rope_parameters",
                "query_pre_attn_scalar", "final_logit_softcapping", "head_dim", "num_key_value_heads",
                "image_size", "patch_size", "num_channels", "id2label"):
        assert saved.get(key) == original.get(key), key


@pytest.mark.parametrize("case,keys", [("vit", ("last_hidden_state", "pooler_output")), ("vit_cls", ("logits",))])
def test_vit_outputs_match_reference(case, keys, loaded):
    model, variables = loaded(case)
    assert type(model) is (tj.ViTEncoder if case == "vit" else tj.ViT)
    ref = reference(case)
    out = model.apply(variables, ref["pixel_values"], method="forward")  # channels first, as the reference
    assert set(out) == set(keys)
    for key in keys:
        assert out[key].shape == ref[key].shape and relative_error(out[key], ref[key]) < 1e-4


def test_vit_classifier_call_takes_channels_last(loaded):
    model, variables = loaded("vit_cls")
    ref = reference("vit_cls")
    images = np.transpose(ref["pixel_values"], (0, 2, 3, 1))  # [B, H, W, C]
    assert relative_error(model.apply(variables, images), ref["logits"]) < 1e-4


def test_vit_from_scratch_saves_its_geometry(tmp_path):
    """A ViT never loaded from a checkpoint writes its own image geometry (not the reference's
    224/16 defaults), and loads back as it was."""
    cfg = tj.tiny(num_decoder_layers=0, norm_position="pre", position="learned", pooling="cls",
                  activation="gelu", norm_eps=1e-12, num_classes=3)
    vit = tj.ViTConfig(image_size=(8, 12), patch_size=4, num_channels=2)
    model = tj.ViT(cfg, vit)
    variables = model.init(jax.random.key(0), np.zeros((1, 8, 12, 2), np.float32))
    tj.save_pretrained(model, variables, tmp_path / "vit")
    saved = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert (saved["image_size"], saved["patch_size"], saved["num_channels"]) == ([8, 12], 4, 2)
    model2, variables2 = tj.from_pretrained(tmp_path / "vit")
    assert model2.vit == vit
    images = np.random.default_rng(0).standard_normal((2, 8, 12, 2)).astype(np.float32)
    np.testing.assert_array_equal(model2.apply(variables2, images), model.apply(variables, images))


def copy_case(case, tmp_path, **changes) -> Path:
    d = tmp_path / case
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        (d / f).write_bytes((FIXTURES / case / f).read_bytes())
    hf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**hf, **changes}))
    return d


@pytest.mark.parametrize("case,field,value", [
    ("gemma3", "attn_logit_softcapping", 50.0),
    ("gemma3", "use_bidirectional_attention", True),
    ("gemma3", "rope_scaling", {"rope_type": "linear", "factor": 8.0}),
    ("gemma3", "hidden_activation", "relu"),
    ("gemma3", "layer_types", ["sliding_attention", "chunked_attention", "full_attention"]),
    ("qwen3", "attention_bias", True),
    ("qwen3", "rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}),
    ("vit_cls", "qkv_bias", False),
])
def test_unsupported_config_field_is_named(case, field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        tj.from_pretrained(copy_case(case, tmp_path, **{field: value}))


def test_qwen3_older_config_without_layer_types(tmp_path):
    """Before transformers 5, Qwen configs said use_sliding_window / max_window_layers: layers
    from max_window_layers on slide."""
    d = copy_case("qwen3", tmp_path, layer_types=None, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    model, _ = tj.from_pretrained(d)
    assert model.cfg.decoder_specs == (Dense(), Windowed(3))


@pytest.mark.parametrize("changes,field", [
    (dict(norm="layernorm", norm_scale_offset=1.0), "norm_scale_offset"),
    (dict(norm_position="post", sandwich_norm=True), "sandwich_norm"),
    (dict(position="learned", rotary_local_base=1e4), "rotary_local_base"),
    (dict(logits_softcap=0.0), "logits_softcap"),
    (dict(qk_norm=1), "qk_norm"),
])
def test_config_options_are_validated(changes, field):
    with pytest.raises(ValueError, match=field):
        tj.tiny(**changes)


def test_offset_rmsnorm_matches_numpy():
    """(offset + scale) RMSNorm in float64 NumPy, on q/k heads (`qk_norm`) as the block uses it."""
    from transformer_jax.layers import OffsetRMSNorm

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    norm = OffsetRMSNorm(1e-6, 1.0, "kv")
    scale = rng.standard_normal(8).astype(np.float32) * 0.1
    out = np.asarray(norm.apply({"params": {"scale": scale}}, x))
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6) * (1.0 + scale)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    fresh = nn.unbox(norm.init(jax.random.key(0), x))["params"]["scale"]
    np.testing.assert_array_equal(fresh, 0.0)  # multiplies by 1 + 0 at init


@pytest.mark.parametrize("case", CAUSAL)
def test_tokenizer_files_match_reference(case):
    ref = reference(case)
    tok = tj.load_tokenizer(FIXTURES / case)
    assert tok.encode(str(ref["tok_text"])) == ref["tok_ids"].tolist()
    assert tok.decode(ref["tok_ids"]).strip() == str(ref["tok_text"])


def test_gemma3_older_config_format(loaded, tmp_path):
    """transformers 4 wrote Gemma 3 configs with rope_theta, rope_local_base_freq and a
    sliding_window_pattern instead of rope_parameters per layer type and layer_types."""
    d = copy_case("gemma3", tmp_path, rope_parameters=None, layer_types=None, rope_theta=1e6,
                  rope_local_base_freq=1e4, sliding_window_pattern=2, rope_scaling=None)
    model, variables = tj.from_pretrained(d)
    expected, _ = loaded("gemma3")
    assert model.cfg.replace(hf_config=()) == expected.cfg.replace(hf_config=())
    ref = reference("gemma3")
    assert relative_error(logits_of(model, variables, ref), ref["logits"]) < 1e-4


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_sliding_layers_map_both_ways(name, loaded):
    """Per-layer specs -> layer_types + sliding_window -> the same specs."""
    from transformer_jax.pretrained.families import family

    model, _ = loaded(name)
    cfg = model.cfg.replace(num_decoder_layers=4, decoder_attention=(Dense(), Windowed(7), Windowed(7), Dense()))
    fam = family(name)
    hf = fam.to_hf(cfg)
    assert hf["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert hf["sliding_window"] == 8
    assert fam.to_config({**hf, "architectures": list(fam.architectures)}).decoder_specs == cfg.decoder_specs
    mixed = cfg.replace(decoder_attention=(Dense(), Windowed(7), Windowed(3), Dense()))
    with pytest.raises(ValueError, match="decoder_attention mixes windows"):
        fam.to_hf(mixed)


def test_cached_decoding_matches_full_pass_with_every_option():
    """Greedy tokens of the cached decode path are the argmax of one full pass over the result,
    with q/k norms, (1 + w) norms, sandwich norms, windowed and global layers on their own rotary
    bases, a query scale and softcapped logits all on."""
    cfg = tj.tiny(num_encoder_layers=0, num_decoder_layers=3, norm="rmsnorm", norm_position="pre",
                  position="rotary", activation="geglu_tanh", use_bias=False, pad_id=None, num_kv_heads=2,
                  head_dim=16, qk_norm=True, norm_scale_offset=1.0, sandwich_norm=True, rotary_base=1e6,
                  rotary_local_base=1e4, attention_scale=0.2, logits_softcap=5.0, tie_output=True,
                  decoder_attention=(Windowed(2), Dense(), Windowed(2)))
    model = tj.DecoderLM(cfg)
    prompt = np.random.default_rng(1).integers(3, cfg.vocab_size, (2, 6)).astype(np.int32)
    variables = model.init(jax.random.key(3), prompt)
    # the norms' scales start at 0 (times 1 + 0): give them values, so a dropped offset would show
    variables = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.3 * jax.random.normal(jax.random.key(len(str(p))), x.shape)
        if "norm" in str(p) else x, variables)
    tokens = np.asarray(tj.generate(model, variables, prompt, max_new_tokens=8,
                                    generation_config=tj.GenerationConfig(eos_ids=())))  # never ends early
    logits = np.asarray(model.apply(variables, tokens))
    np.testing.assert_array_equal(logits[:, prompt.shape[1] - 1:-1].argmax(-1), tokens[:, prompt.shape[1]:])
