"""LoRA (transformer_jax.lora): a fresh adapter is the identity, merged weights equal the low-rank
update computed on the fly in float64 NumPy, only adapters train (and only they hold optimiser
state), a few steps fit a tiny task, named errors, save/load, sharding, a loaded pretrained model."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import transformer_jax as tj
from transformer_jax import lora
from transformer_jax import sharding as shd
from transformer_jax.layers import Projection
from transformer_jax.train import optim

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
ALL = ("query", "key", "value", "out", "wi", "wo", "logits", "pooler", "classifier")


def _tokens(key, shape, vocab=64):
    return jax.random.randint(jax.random.key(key), shape, 3, vocab)


def _randomize_b(adapters, seed=0):
    """Non-zero B (a trained adapter), so the update is visible."""
    leaves, tree = jax.tree_util.tree_flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module")
def seq2seq():
    cfg = tj.tiny(num_encoder_layers=1, num_decoder_layers=1, tie_output=False)
    model = tj.Transformer(cfg)
    src, tgt = _tokens(0, (2, 7)), _tokens(1, (2, 5))
    params = nn.meta.unbox(model.init(jax.random.key(2), src, tgt)["params"])
    return model, params, src, tgt


def test_zero_initialised_adapter_changes_nothing(seq2seq):
    model, params, src, tgt = seq2seq
    config = lora.LoraConfig(rank=4, alpha=8.0, targets=ALL)
    adapters = lora.init_lora(jax.random.key(3), params, config)
    chosen = lora.targeted(params, config)
    assert {p[-1] for p in chosen} == {"query", "key", "value", "out", "wi", "wo", "logits"}
    merged = lora.merge_lora(params, adapters, config)
    np.testing.assert_array_equal(model.apply({"params": merged}, src, tgt), model.apply({"params": params}, src, tgt))
    # A is random (not zero), B is zero: the paper's initialisation
    q = adapters["encoder"]["layer_0"]["self_attention"]["query"]
    assert q["a"].shape == (32, 4) and q["b"].shape == (4, 4, 8)
    assert float(jnp.abs(q["a"]).max()) > 0 and float(jnp.abs(q["b"]).max()) == 0


@pytest.mark.parametrize("features,in_dims,x_shape", [((4, 8), 1, (3, 5, 32)),  # query [D, N, H]
                                                      (32, 2, (3, 5, 4, 8))])  # out [N, H, D]
def test_merged_kernel_equals_low_rank_update_on_the_fly(features, in_dims, x_shape):
    """Projection with W + s·AB (merged) against x·W + s·(x·A)·B in float64 NumPy."""
    proj = Projection(features, ("embed", "heads", "kv")[: in_dims + (2 if isinstance(features, tuple) else 1)],
                      in_dims=in_dims)
    x = jax.random.normal(jax.random.key(0), x_shape)
    params = nn.meta.unbox(proj.init(jax.random.key(1), x)["params"])
    params["bias"] = jax.random.normal(jax.random.key(4), params["bias"].shape)
    config = lora.LoraConfig(rank=3, alpha=6.0, targets=(".*",))
    tree = {"proj": params}
    adapters = _randomize_b(lora.init_lora(jax.random.key(2), tree, config))
    merged = lora.merge_lora(tree, adapters, config)["proj"]
    got = np.asarray(proj.apply({"params": merged}, x))

    x64, w = np.asarray(x, np.float64), np.asarray(params["kernel"], np.float64)
    a = np.asarray(adapters["proj"]["a"], np.float64)
    b = np.asarray(adapters["proj"]["b"], np.float64)
    fan_in = int(np.prod(w.shape[:in_dims]))
    xf = x64.reshape(*x64.shape[: x64.ndim - in_dims], fan_in)  # [..., in] flattened
    want = xf @ w.reshape(fan_in, -1) + config.scale * ((xf @ a.reshape(fan_in, -1)) @ b.reshape(config.rank, -1))
    want = want.reshape(got.shape) + np.asarray(params["bias"], np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_merged_model_equals_hand_built_weights(seq2seq):
    """The whole model on merge_lora's params equals it on W + s·AB built by hand in float64."""
    model, params, src, tgt = seq2seq
    config = lora.LoraConfig(rank=2, alpha=1.5, targets=("value", "out", "wo"))
    adapters = _randomize_b(lora.init_lora(jax.random.key(3), params, config))
    by_hand = jax.tree.map(lambda x: x, params)
    for path in lora.targeted(params, config):
        node, ad = by_hand, adapters
        for k in path:
            node, ad = node[k], ad[k]
        a, b = np.asarray(ad["a"], np.float64), np.asarray(ad["b"], np.float64)
        node["kernel"] = jnp.asarray(np.asarray(node["kernel"], np.float64) + config.scale * np.tensordot(a, b, 1),
                                     jnp.float32)
    merged = lora.merge_lora({"params": params}, adapters, config)
    got = model.apply(merged, src, tgt)
    np.testing.assert_allclose(got, model.apply({"params": by_hand}, src, tgt), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got - model.apply({"params": params}, src, tgt)).max()) > 1e-3


def _classification_task():
    cfg = tj.tiny(num_encoder_layers=1, num_classes=2, dropout_rate=0.0)
    model = tj.EncoderClassifier(cfg)
    x = _tokens(5, (16, 6))
    y = (jnp.sum(x == x[:, :1], axis=1) > 1).astype(jnp.int32) ^ (x[:, 0] % 2)  # any fixed labelling
    params = nn.meta.unbox(model.init(jax.random.key(6), x)["params"])
    return model, params, x, y


def test_only_adapters_train_and_hold_optimizer_state():
    model, frozen, x, y = _classification_task()
    config = lora.LoraConfig(rank=4, alpha=8.0, targets=("query", "value", "classifier"))
    init, params_for_apply = lora.lora_train_fns(frozen, config)
    adapters = init(jax.random.key(7))
    # the library's optimiser (clip + AdamW; adapters are not "kernel"s, so they get no decay)
    tx = optim.make_optimizer("adamw", optax.constant_schedule(3e-2), weight_decay=0.1, clip_norm=1.0)
    opt_state = tx.init(adapters)
    assert optim.state_size(opt_state) == 2 * lora.adapter_count(adapters)  # Adam's mu and nu only
    assert not any(jax.tree.leaves(optim.decay_mask(adapters)))
    assert lora.adapter_count(adapters) < tj.param_count(frozen) // 5

    def loss(adapters, frozen):
        logits = model.apply({"params": params_for_apply(adapters, frozen)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # the frozen weights get no gradient even when differentiated (stop_gradient inside)
    g_frozen = jax.grad(loss, argnums=1)(adapters, frozen)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(g_frozen))

    @jax.jit
    def step(adapters, opt_state, frozen):
        value, grads = jax.value_and_grad(loss)(adapters, frozen)
        updates, opt_state = tx.update(grads, opt_state, adapters)
        return optax.apply_updates(adapters, updates), opt_state, value

    before = jax.tree.map(np.asarray, frozen)
    losses = []
    for _ in range(40):
        adapters, opt_state, value = step(adapters, opt_state, frozen)
        losses.append(float(value))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, frozen))
    assert losses[-1] < 0.5 * losses[0], losses
    # B moved away from zero: the adapters are what trained
    b = adapters["encoder"]["layer_0"]["self_attention"]["value"]["b"]
    assert float(jnp.abs(b).max()) > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(rank=0), "lora.rank must be a positive integer; got 0"),
    (dict(rank=-2), "lora.rank.*-2"),
    (dict(rank=2.5), "lora.rank.*2.5"),
    (dict(alpha=0.0), "lora.alpha must be a positive number; got 0.0"),
    (dict(alpha=float("nan")), "lora.alpha"),
    (dict(targets=()), "lora.targets must be a non-empty"),
    (dict(targets=("query", "(")), "lora.targets entry '\\('"),
])
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lora.LoraConfig(**kwargs)


def test_targets_matching_nothing_list_the_projections(seq2seq):
    _, params, _, _ = seq2seq
    with pytest.raises(ValueError, match=r"lora.targets=\('qkv',\) match no projection.*key, logits, out, query"):
        lora.init_lora(jax.random.key(0), params, lora.LoraConfig(targets=("qkv",)))
    with pytest.raises(ValueError, match="match no projection"):
        lora.lora_train_fns(params, lora.LoraConfig(targets=("decoder/layer_7/.*",)))
    # a path pattern picks a subset
    only = lora.targeted(params, lora.LoraConfig(targets=("decoder/.*/(query|value)",)))
    assert {p[0] for p in only} == {"decoder"} and {p[-1] for p in only} == {"query", "value"}
    assert len(only) == 4  # self- and cross-attention of the one decoder layer


def test_save_and_load_adapters_alone(seq2seq, tmp_path):
    model, params, src, tgt = seq2seq
    config = lora.LoraConfig(rank=2, alpha=4.0, targets=("query", "wi"))
    adapters = _randomize_b(lora.init_lora(jax.random.key(3), params, config))
    lora.save_adapters(tmp_path / "ad", adapters, config)
    loaded, config2 = lora.load_adapters(tmp_path / "ad")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, adapters, loaded)
    np.testing.assert_array_equal(model.apply({"params": lora.merge_lora(params, loaded, config2)}, src, tgt),
                                  model.apply({"params": lora.merge_lora(params, adapters, config)}, src, tgt))
    size = (tmp_path / "ad" / lora.ADAPTER_FILE).stat().st_size
    assert size < 4 * tj.param_count(params) / 10  # the base weights are not in the file
    with pytest.raises(FileNotFoundError, match="lacks"):
        lora.load_adapters(tmp_path / "nothing")


def test_adapters_shard_like_their_kernels():
    model = tj.Transformer(tj.tiny(num_encoder_layers=1, num_decoder_layers=1))
    src = jnp.zeros((8, 4), jnp.int32)
    boxed = jax.eval_shape(lambda k: model.init(k, src, src)["params"], jax.random.key(0))
    config = lora.LoraConfig(rank=4, targets=("query", "out", "wi"))
    adapters = jax.eval_shape(lambda k: lora.init_lora(k, boxed, config), jax.random.key(1))
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    specs = jax.tree.map(lambda s: s.spec, shd.logical_shardings(adapters, mesh),
                         is_leaf=lambda s: hasattr(s, "spec"))
    attn = specs["encoder"]["layer_0"]["self_attention"]
    assert tuple(attn["query"]["a"]) == ("fsdp", None) and tuple(attn["query"]["b"]) == (None, "tensor", None)
    assert tuple(attn["out"]["a"]) == ("tensor", None, None) and tuple(attn["out"]["b"]) == (None, "fsdp")
    mlp = specs["encoder"]["layer_0"]["mlp"]["wi"]
    assert tuple(mlp["a"]) == ("fsdp", None) and tuple(mlp["b"]) == (None, "tensor")


def test_lora_on_a_loaded_pretrained_classifier():
    model, variables = tj.from_pretrained(FIXTURES / "bert_cls")
    ref = dict(np.load(FIXTURES / "bert_cls" / "reference.npz"))
    ids, types = ref["input_ids"], ref["token_type_ids"]
    config = lora.LoraConfig(rank=2, alpha=4.0, targets=("query", "value"))
    adapters = lora.init_lora(jax.random.key(0), variables, config)
    merged = lora.merge_lora(variables, adapters, config)
    out = np.asarray(model.apply(merged, ids, token_types=types))
    np.testing.assert_array_equal(out, np.asarray(model.apply(variables, ids, token_types=types)))
    np.testing.assert_allclose(out, ref["logits"], rtol=1e-4, atol=1e-4)
    trained = _randomize_b(adapters)
    moved = np.asarray(model.apply(lora.merge_lora(variables, trained, config), ids, token_types=types))
    assert np.abs(moved - out).max() > 1e-4


def test_config_section():
    import ml_collections

    section = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=("query", "value")))
    assert lora.from_config(section) is None and lora.from_config(None) is None  # off
    section.rank = 4
    assert lora.from_config(section) == lora.LoraConfig(rank=4, alpha=16.0, targets=("query", "value"))
    section.rank = -1
    with pytest.raises(ValueError, match="lora.rank must be a positive integer .0 turns LoRA off.; got -1"):
        lora.from_config(section)
    with pytest.raises(ValueError, match="lora.alpha"):
        lora.from_config(dict(rank=2, alpha=-1.0, targets=("query",)))


def test_merge_under_jit_on_a_sharded_mesh_equals_single_device(seq2seq):
    model, params, src, tgt = seq2seq
    config = lora.LoraConfig(rank=4, targets=("query", "out", "wi"))
    boxed = jax.eval_shape(lambda k: model.init(k, src, tgt)["params"], jax.random.key(2))
    boxed_adapters = jax.eval_shape(lambda k: lora.init_lora(k, boxed, config), jax.random.key(1))
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    p_shard = shd.logical_shardings(boxed, mesh)
    a_shard = shd.logical_shardings(boxed_adapters, mesh)
    adapters = _randomize_b(lora.init_lora(jax.random.key(1), params, config))
    sharded_p, sharded_a = jax.device_put(params, p_shard), jax.device_put(adapters, a_shard)
    merged = jax.jit(lambda p, a: lora.merge_lora(p, a, config), out_shardings=p_shard)(sharded_p, sharded_a)
    want = lora.merge_lora(params, adapters, config)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), merged, want)
    q = merged["encoder"]["layer_0"]["self_attention"]["query"]["kernel"]
    assert q.sharding.spec == p_shard["encoder"]["layer_0"]["self_attention"]["query"]["kernel"].spec


def test_lora_train_state_is_created_sharded_like_the_library_state():
    """What `train.state.create_train_state` would build with LoRA: adapters as the trained params,
    the base as frozen, the optimiser state from `tx.init(adapters)`; all boxed, resolved by the
    rules table and materialised by jit(out_shardings) on a 2x2x2 mesh; then one sharded step."""
    model = tj.EncoderClassifier(tj.tiny(num_encoder_layers=1, num_classes=3))
    config = lora.LoraConfig(rank=4, targets=("query", "value", "classifier"))
    tx = optim.make_optimizer("adamw", optax.constant_schedule(1e-2), weight_decay=0.01)
    x = _tokens(8, (8, 6))
    y = jnp.arange(8) % 3

    def boxed_init(key):
        params = model.init(key, jnp.zeros((8, 6), jnp.int32))["params"]
        adapters = lora.init_lora(jax.random.fold_in(key, 1), params, config)
        return {"params": adapters, "frozen": params, "opt_state": tx.init(adapters)}

    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = shd.logical_shardings(jax.eval_shape(boxed_init, jax.random.key(0)), mesh)
    state = jax.jit(lambda k: nn.meta.unbox(boxed_init(k)), out_shardings=shardings)(jax.random.key(0))
    assert optim.state_size(state["opt_state"]) == 2 * lora.adapter_count(state["params"])
    b_spec = state["params"]["classifier"]["b"].sharding.spec
    assert tuple(b_spec) in ((None, None), (None,), ())  # classes replicate

    def step(state, x, y):
        def loss(adapters):
            merged = lora.merge_lora(jax.lax.stop_gradient(state["frozen"]), adapters, config)
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": merged}, x), y).mean()

        value, grads = jax.value_and_grad(loss)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {**state, "params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, value

    with shd.activate(mesh):
        jstep = jax.jit(step, in_shardings=(shardings, shd.batch_sharding(mesh), shd.batch_sharding(mesh, 1)),
                        out_shardings=(shardings, shd.replicated(mesh)))
        new, value = jstep(state, x, y)
        new, value2 = jstep(new, x, y)
    assert float(value2) < float(value)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new["frozen"]), jax.device_get(state["frozen"]))


def test_lora_and_int8_on_scanned_layers_match_per_layer():
    """Under `scan_layers=True` kernels carry a leading layer axis: adapters get one factor pair per
    layer and int8 one scale per layer and channel, the same as on the unscanned model."""
    import dataclasses

    cfg = tj.tiny(num_encoder_layers=2, num_decoder_layers=2, tie_output=False)
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
    src, tgt = _tokens(0, (2, 7)), _tokens(1, (2, 5))
    params = nn.meta.unbox(tj.Transformer(cfg).init(jax.random.key(2), src, tgt)["params"])
    stacked = tj.stack_layers(params, cfg)
    config = lora.LoraConfig(rank=4, alpha=8.0, targets=("query", "value", "wi"))
    adapters = _randomize_b(lora.init_lora(jax.random.key(3), params, config))
    stacked_adapters = lora.init_lora(jax.random.key(3), stacked, config)
    a = stacked_adapters["encoder"]["layers"]["layer_0"]["self_attention"]["query"]["a"]
    assert a.shape == (2, 32, 4)  # [layers, D, r]
    stacked_adapters = tj.stack_layers(adapters, cfg)  # the per-layer pairs, stacked like the kernels
    merged = lora.merge_lora(stacked, stacked_adapters, config)
    want = tj.stack_layers(lora.merge_lora(params, adapters, config), cfg)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), merged, want)
    out = tj.Transformer(scanned_cfg).apply({"params": merged}, src, tgt)
    np.testing.assert_allclose(out, tj.Transformer(cfg).apply({"params": lora.merge_lora(params, adapters, config)},
                                                                src, tgt), rtol=1e-5, atol=1e-5)
    q_stacked = tj.dequantize(tj.quantize({"params": stacked}))["params"]
    q_layers = tj.stack_layers(tj.dequantize(tj.quantize({"params": params}))["params"], cfg)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), q_stacked, q_layers)
