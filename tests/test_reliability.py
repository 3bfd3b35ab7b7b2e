"""Nothing silent on the model-side paths (issue 24): MoE settings that build no expert, LoRA ranks,
double quantization, MoE experts under int8, `to_nnx` without a "params" key."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import transformer_jax as tj
from transformer_jax import lora, quantization

# ---- item 3: experts requested, none built -------------------------------------------------------


@pytest.mark.parametrize("overrides", [dict(num_encoder_layers=1, num_decoder_layers=1),  # default every 2nd
                                       dict(moe_layers=10), dict(moe_layers=())],
                         ids=["one_layer_every_second", "every_tenth", "empty_tuple"])
def test_experts_selecting_no_layer_is_named(overrides):
    with pytest.raises(ValueError, match=r"num_experts=4.*moe_layers=.*selects no layer"):
        tj.tiny(num_experts=4, **overrides)


def test_experts_on_one_stack_are_fine():
    cfg = tj.tiny(num_experts=4, num_encoder_layers=0, num_decoder_layers=2)
    assert cfg.decoder_moe == (False, True)


# ---- item 6 and 13: LoRA ranks ------------------------------------------------------------------


def _lora_setup(rank):
    cfg = tj.tiny(num_encoder_layers=1, num_decoder_layers=0, vocab_size=32, d_model=16, num_heads=2, d_ff=32)
    model = tj.Encoder(cfg)
    x = jnp.asarray(np.random.default_rng(0).integers(1, 32, (2, 5)))
    params = model.init(jax.random.key(0), x)["params"]
    config = lora.LoraConfig(rank=rank, alpha=8.0)
    adapters = nn.unbox(lora.init_lora(jax.random.key(1), params, config))
    adapters = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), adapters)
    return params, adapters, config


def test_merge_with_another_rank_than_the_adapters_is_named():
    params, adapters, _ = _lora_setup(rank=8)
    with pytest.raises(ValueError, match=r"rank 8.*LoraConfig.rank=4"):
        lora.merge_lora(params, adapters, lora.LoraConfig(rank=4, alpha=8.0))


def test_a_and_b_of_different_ranks_are_named():
    params, adapters, config = _lora_setup(rank=4)
    path = next(iter(lora._adapter_leaves(adapters)))
    node = adapters
    for key in path:
        node = node[key]
    node["b"] = node["b"][:3]
    with pytest.raises(ValueError, match=r"A has rank 4.*B has rank 3"):
        lora.merge_lora(params, adapters, config)


def test_lora_rank_larger_than_the_projection_is_named():
    cfg = tj.tiny(num_encoder_layers=1, num_decoder_layers=0, vocab_size=32, d_model=16, num_heads=2, d_ff=32)
    params = tj.Encoder(cfg).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    with pytest.raises(ValueError, match=r"lora.rank=32 exceeds.*16"):
        lora.init_lora(jax.random.key(1), params, lora.LoraConfig(rank=32))


def test_lora_config_without_alpha_and_truncated_adapters_are_named(tmp_path):
    params, adapters, config = _lora_setup(rank=2)
    lora.save_adapters(str(tmp_path), adapters, config)
    (tmp_path / "lora_config.json").write_text(json.dumps({"rank": 2, "targets": ["query"]}))
    with pytest.raises(ValueError, match=r"lora_config.json.*'alpha'"):
        lora.load_adapters(str(tmp_path))
    (tmp_path / "lora_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"lora_config.json.*JSON object"):
        lora.load_adapters(str(tmp_path))
    lora.save_adapters(str(tmp_path), adapters, config)
    data = (tmp_path / "adapters.safetensors").read_bytes()
    (tmp_path / "adapters.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"adapters.safetensors.*truncated"):
        lora.load_adapters(str(tmp_path))


# ---- items 7 and 8: quantization ----------------------------------------------------------------


def _moe_model():
    cfg = tj.tiny(num_experts=4, num_encoder_layers=0, num_decoder_layers=2, moe_layers=1, vocab_size=32)
    model = tj.DecoderLM(cfg)
    x = jnp.asarray(np.random.default_rng(0).integers(1, 32, (2, 6)))
    return model, model.init(jax.random.key(0), x), x


def test_quantizing_quantized_variables_is_refused():
    model, variables, _ = _moe_model()
    q = tj.quantize(variables, "int8")
    with pytest.raises(ValueError, match=r"already quantized.*int8.*kernel"):
        tj.quantize(q.variables, "int8")
    with pytest.raises(ValueError, match=r"already quantized.*_scale"):
        tj.quantize(jax.tree.map(lambda x: x.astype(jnp.float32), q.variables), "int8")


def test_save_pretrained_of_quantized_variables_says_dequantize_first(tmp_path):
    model, variables = tj.from_pretrained("tests/fixtures/pretrained/gpt2")
    q = tj.quantize(variables, "int8")
    for given in (q, q.variables):
        with pytest.raises(ValueError, match="dequantize first"):
            tj.save_pretrained(model, given, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_moe_experts_are_quantized_per_expert_and_channel():
    model, variables, x = _moe_model()
    q = tj.quantize(variables, "int8")
    layer = q.variables["params"]["decoder"]["layer_0"]
    moe = next(v for v in layer.values() if isinstance(v, dict) and "router" in v)
    w = nn.unbox(variables)["params"]["decoder"]["layer_0"]
    w = next(v for v in w.values() if isinstance(v, dict) and "router" in v)
    for name in ("wi", "wo"):
        assert moe[name].dtype == jnp.int8, name
        e, n_in, n_out = w[name].shape
        assert moe[name + "_scale"].shape == (e, 1, n_out), name
        want = np.abs(np.asarray(w[name])).max(axis=1, keepdims=True) / 127  # float64-free exact: max / 127
        np.testing.assert_allclose(np.asarray(moe[name + "_scale"]), want, rtol=1e-6)
        err = np.abs(np.asarray(moe[name], np.float32) * want - np.asarray(w[name]))
        assert (err <= want / 2 + 1e-7).all(), name
    assert moe["router"].dtype == jnp.float32  # routing stays exact
    out, ref = q.apply(model, x), model.apply(variables, x)
    assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max())


# ---- item 13: to_nnx with parameters lacking the "params" key -------------------------------------


def test_to_nnx_without_the_params_key_says_so():
    from transformer_jax.nnx import to_nnx

    cfg = tj.tiny(num_encoder_layers=1, num_decoder_layers=0, vocab_size=32)
    model = tj.Encoder(cfg)
    x = jnp.ones((1, 4), jnp.int32)
    params = model.init(jax.random.key(0), x)["params"]
    with pytest.raises(ValueError, match=r"\{'params': \.\.\.\}.*got keys.*layer_0"):
        to_nnx(model, x, variables=params)


# ---- item 13: configs and image tasks -------------------------------------------------------------


def test_tiny_config_fits_its_own_default_task():
    import os
    import runpy

    from transformer_jax.train.experiment import validate_config

    c = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tiny.py"))["get_config"]()
    assert c.data.dataset != "synthetic"
    validate_config(c, num_devices=1, process_count=1)


def test_image_shift_larger_than_the_image_is_named():
    from transformer_jax import tasks

    task = tasks.ImageClassification(image_size=(8, 8), patch_size=4)
    with pytest.raises(ValueError, match=r"shift=8.*8x8"):
        task.with_options(shift=8)
    assert task.with_options(shift=7).shift == 7


# ---- item 13: the ETA under a time budget ------------------------------------------------------------


def test_eta_is_capped_by_the_time_budget(capsys, monkeypatch):
    from transformer_jax.train import logs

    progress = logs.Progress(0, 1000, "tokens", bar=False, budget_left=lambda: 90.0)
    progress.t0 -= 10.0  # 10 s for 1 step: 999 steps to go would take ~2.8 h
    monkeypatch.setattr(progress, "lines", True)
    progress.log(1, 2.5, 100.0)
    assert capsys.readouterr().out.strip() == logs.progress_line(1, 1000, 2.5, 100.0, "tokens", 90.0)
