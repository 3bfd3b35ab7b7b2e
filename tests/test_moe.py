"""Mixture of experts (transformer_jax/moe.py): the layer against a float64 NumPy loop over experts,
routing and dropped tokens on hand-built cases, the auxiliary losses against their formulas,
expert parallelism on 8 simulated devices against one device, and the named errors."""

import math
import os
import runpy

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from transformer_jax import sharding as shd
from transformer_jax import moe
from transformer_jax.config import tiny
from transformer_jax.model import Encoder, Transformer
from transformer_jax.train.experiment import validate_config
from transformer_jax.train.step import StepConfig, _loss_sums

ACT = {"relu": lambda h: np.maximum(h, 0), "silu": lambda h: h / (1 + np.exp(-h)),
       "gelu": lambda h: 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))}
GATE = {"swiglu": "silu", "geglu": "gelu"}
route = jax.jit(moe.route, static_argnums=(1, 2))  # (logits, top_k, capacity_slots)


def _random_params(params, seed):
    """Every leaf redrawn ~N(0, 0.3^2) (biases included, so no path hides behind a zero init)."""
    leaves, treedef = jax.tree.flatten(nn.unbox(params))
    rng = np.random.default_rng(seed)
    return treedef.unflatten([jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype) for x in leaves])


def _reference(p, x, top_k, activation):
    """float64 NumPy: each token's top-k experts (by router probability, gates renormalised for
    k > 1), each expert's MLP run on that token alone, summed with the gates. No capacity."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    logits = x @ p["router"]  # [B T E]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for b, t in np.ndindex(*x.shape[:2]):
        top = np.argsort(-probs[b, t])[:top_k]
        gates = probs[b, t, top] / (probs[b, t, top].sum() if top_k > 1 else 1.0)
        for e, g in zip(top, gates):
            h = ACT[GATE.get(activation, activation)](x[b, t] @ p["wi"][e] + p["wi_bias"][e])
            if activation in GATE:
                h = h * (x[b, t] @ p["wi_gate"][e] + p["wi_gate_bias"][e])
            out[b, t] += g * (h @ p["wo"][e] + p["wo_bias"][e])
    return out, logits, probs


@pytest.mark.parametrize("top_k,activation", [(1, "relu"), (2, "swiglu")])
def test_matches_float64_loop_over_experts_when_nothing_is_dropped(top_k, activation):
    e, b, t, d = 4, 3, 5, 8
    layer = moe.MoEMLP(num_experts=e, d_ff=16, activation=activation, top_k=top_k,
                       capacity_factor=e / top_k)  # capacity = T: no expert can overflow
    x = jax.random.normal(jax.random.PRNGKey(0), (b, t, d))
    params = _random_params(jax.eval_shape(layer.init, jax.random.PRNGKey(1), x)["params"], seed=2)
    y, sown = jax.jit(lambda p, x: layer.apply({"params": p}, x, mutable=[moe.AUX_LOSS, moe.METRICS]))(params, x)
    want, logits, probs = _reference(params, x, top_k, activation)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert float(sown[moe.METRICS]["dropped_fraction"][0]) == 0.0
    # (d) the sown auxiliary losses: Switch eq. 4 and ST-MoE eq. 5 by hand, times their weights
    f = np.bincount(np.argmax(probs, -1).ravel(), minlength=e) / (b * t)
    balance = e * np.sum(f * probs.mean((0, 1)))
    z = np.mean(np.log(np.exp(logits).sum(-1)) ** 2)
    np.testing.assert_allclose(sown[moe.METRICS]["load_balance"][0], balance, rtol=1e-5)
    np.testing.assert_allclose(sown[moe.METRICS]["router_z"][0], z, rtol=1e-5)
    np.testing.assert_allclose(sown[moe.AUX_LOSS]["load_balance"][0], 0.01 * balance, rtol=1e-5)
    np.testing.assert_allclose(sown[moe.AUX_LOSS]["router_z"][0], 0.001 * z, rtol=1e-5)


def _logits_choosing(choices, num_experts):
    """Logits [1, T, E] whose ranking of experts per token is `choices` (first choice first)."""
    logits = np.zeros((1, len(choices), num_experts), np.float32)
    for t, ranked in enumerate(choices):
        for r, e in enumerate(ranked):
            logits[0, t, e] = 3.0 - r
    return jnp.asarray(logits)


def test_top1_drops_tokens_past_capacity_in_token_order():
    # five tokens want expert 0, one wants expert 1; capacity 2: tokens 2, 3, 4 are dropped
    r = route(_logits_choosing([[0], [0], [0], [0], [0], [1]], 2), 1, 2)
    assert float(r.dropped) == 3.0
    slots = np.argwhere(np.asarray(r.dispatch[0]))  # (t, e, c) of every dispatched token
    np.testing.assert_array_equal(slots, [[0, 0, 0], [1, 0, 1], [5, 1, 0]])
    probs = np.asarray(r.probs[0])  # Switch: the output is scaled by the raw router probability
    np.testing.assert_allclose(np.asarray(r.combine[0]).sum((1, 2)), [probs[0, 0], probs[1, 0], 0, 0, 0, probs[5, 1]])
    assert moe.capacity(6, 2, 1, 1.0) == 3 and moe.capacity(6, 2, 1, 0.5) == 2 and moe.capacity(6, 2, 2, 4.0) == 6


def test_top2_fills_first_choices_before_second_choices():
    # first choices e0 e1 e0 e0, second e1 e0 e2 e1; capacity 2. First choices go first: e0 takes
    # t0, t2 (t3's first choice dropped), e1 takes t1; then seconds: t0 -> e1 slot 1, t1 -> e0
    # (full, dropped), t2 -> e2 slot 0, t3 -> e1 (full, dropped). 3 of 8 assignments dropped.
    r = route(_logits_choosing([[0, 1], [1, 0], [0, 2], [0, 1]], 3), 2, 2)
    assert float(r.dropped) == 3.0
    slots = sorted(map(tuple, np.argwhere(np.asarray(r.dispatch[0]))))
    assert slots == [(0, 0, 0), (0, 1, 1), (1, 1, 0), (2, 0, 1), (2, 2, 0)]
    gates = np.asarray(r.combine[0]).sum(2)  # [T E]; GShard: the two gates renormalised to sum to 1
    probs = np.asarray(r.probs[0])
    np.testing.assert_allclose(gates[0, [0, 1]], probs[0, [0, 1]] / probs[0, [0, 1]].sum(), rtol=1e-6)
    np.testing.assert_allclose(gates.sum(1)[0], 1.0, rtol=1e-6)


def test_padding_tokens_take_no_slot_and_do_not_count():
    # tokens 0 and 1 are padding that would fill expert 0's two slots; masked, the real tokens 2, 3 get them
    logits = _logits_choosing([[0], [0], [0], [0], [1]], 2)
    real = jnp.asarray([[False, False, True, True, True]])  # tokens 0 and 1 are padding
    r = moe.route(logits, 1, 2, real)
    slots = np.argwhere(np.asarray(r.dispatch[0]))
    np.testing.assert_array_equal(slots, [[2, 0, 0], [3, 0, 1], [4, 1, 0]])
    assert float(r.dropped) == 0.0  # 3 real tokens, 3 placed
    alone = moe.route(logits[:, 2:], 1, 2)  # the same three tokens without the padding in front
    np.testing.assert_array_equal(r.dispatch[:, 2:], alone.dispatch)
    np.testing.assert_allclose(moe.load_balance_loss(r.probs, r.first_choice, real),
                               moe.load_balance_loss(alone.probs, alone.first_choice), rtol=1e-6)
    np.testing.assert_allclose(moe.router_z_loss(logits, real), moe.router_z_loss(logits[:, 2:]), rtol=1e-6)


def test_a_padded_batch_routes_its_real_tokens_only():
    # top-2 of 2 experts, capacity ceil(8·2·0.5/2) = 4 slots each: the 4 real tokens fill both experts
    # exactly; routed too, the 4 padding tokens' first choices would take slots before the real
    # tokens' second choices
    from flax.traverse_util import flatten_dict

    cfg = tiny(num_decoder_layers=0, num_experts=2, moe_layers=1, moe_top_k=2, moe_capacity_factor=0.5)
    tokens = jnp.asarray([[5, 6, 7, 8, 0, 0, 0, 0]])
    model = Encoder(cfg)
    params = model.init(jax.random.PRNGKey(0), tokens, (tokens != 0).astype(jnp.int32))["params"]

    def dropped(seg):
        _, sown = model.apply({"params": params}, tokens, seg, mutable=[moe.METRICS])
        return [float(v[0]) for k, v in flatten_dict(sown[moe.METRICS]).items() if k[-1] == "dropped_fraction"]

    assert dropped((tokens != 0).astype(jnp.int32)) == [0.0, 0.0]  # two MoE layers, nothing dropped
    assert all(d > 0 for d in dropped(jnp.ones_like(tokens)))  # every token routed: real ones dropped


def test_dropped_fraction_is_sown_by_the_layer():
    layer = moe.MoEMLP(num_experts=2, d_ff=8, top_k=1, capacity_factor=0.5)  # capacity ceil(4·0.5/2) = 1
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 6))
    params = _random_params(jax.eval_shape(layer.init, jax.random.PRNGKey(4), x)["params"], seed=5)
    # a router that sends every token to expert 0: per row 1 kept, 3 dropped
    params = {**params, "router": jnp.zeros_like(params["router"])}
    y, sown = jax.jit(lambda p, x: layer.apply({"params": p}, x, mutable=[moe.METRICS]))(params, x)
    np.testing.assert_allclose(sown[moe.METRICS]["dropped_fraction"][0], 6 / 8)
    assert np.all(np.asarray(y[:, 1:]) == 0)  # dropped tokens get no feed-forward output


def test_moe_layers_pick_every_nth_layer_or_listed_indices():
    assert tiny(num_experts=4, num_encoder_layers=4).encoder_moe == (False, True, False, True)
    assert tiny(num_experts=4, moe_layers=1).decoder_moe == (True, True)
    assert tiny(num_experts=4, moe_layers=[0]).encoder_moe == (True, False)
    assert tiny(num_experts=0).encoder_moe == (False, False)


def test_expert_parallel_on_8_devices_equals_one_device():
    """data=2 x expert=4 (2 experts per device) vs one device: the training loss (aux losses
    included) and every gradient, with top-2 routing that drops tokens."""
    cfg = tiny(num_experts=8, moe_top_k=2, moe_capacity_factor=1.0, moe_layers=1, num_encoder_layers=1,
               num_decoder_layers=1)
    model = Transformer(cfg)
    rng = np.random.default_rng(0)
    batch = {"src": rng.integers(3, 64, (8, 12)).astype(np.int32),
             "tgt_in": rng.integers(3, 64, (8, 10)).astype(np.int32),
             "tgt_out": rng.integers(3, 64, (8, 10)).astype(np.int32)}
    batch["src"][:, 10:] = 0  # some padding
    from transformer_jax import tasks

    task = tasks.for_model(model)
    args, kwargs = task.model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
    boxed = model.init(jax.random.PRNGKey(0), *args, **kwargs)["params"]
    params = nn.unbox(boxed)

    def loss_fn(p, b):
        sums = _loss_sums(model, p, b, jax.random.PRNGKey(1), deterministic=False, cfg=StepConfig(), task=task)
        return sums["loss"] / sums["weight"], sums

    grad = jax.value_and_grad(loss_fn, has_aux=True)
    (loss1, sums1), grads1 = jax.jit(grad)(params, batch)
    assert float(sums1["aux_loss"]) > 0 and 0 < float(sums1["moe_dropped_fraction"]) < float(sums1["weight"])

    mesh = shd.make_mesh({"data": 2, "expert": 4})
    shardings = shd.logical_shardings(boxed, mesh)
    wi = shardings["encoder"]["layer_0"]["mlp"]["wi"]
    assert wi.spec[0] == "expert"
    with shd.activate(mesh):
        sharded = jax.device_put(params, shardings)
        assert sharded["encoder"]["layer_0"]["mlp"]["wi"].addressable_shards[0].data.shape[0] == 2
        fn = jax.jit(grad, in_shardings=(shardings, shd.batch_spec_tree(batch, mesh)))
        compiled = fn.lower(sharded, shd.shard_batch(batch, mesh)).compile()
        (loss8, sums8), grads8 = compiled(sharded, shd.shard_batch(batch, mesh))
    assert "all-to-all" in compiled.as_text()  # tokens travel to their experts' devices, GShard style
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for k in sums1:
        np.testing.assert_allclose(sums8[k], sums1[k], rtol=1e-5, err_msg=k)
    flat1, flat8 = jax.tree_util.tree_leaves_with_path(grads1), jax.tree.leaves(grads8)
    for (path, g1), g8 in zip(flat1, flat8):
        np.testing.assert_allclose(g8, g1, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))


def test_scanned_stack_with_every_other_layer_moe_equals_the_loop():
    """scan_layers scans MoE-every-other-layer stacks over (dense, MoE) groups; same logits and the
    same summed auxiliary loss (sown stacked) as the per-layer loop."""
    from transformer_jax.scan import stack_layers

    cfg = tiny(num_experts=4, num_encoder_layers=4, moe_capacity_factor=1.0)
    src = jnp.asarray(np.random.default_rng(1).integers(3, 64, (2, 8)), jnp.int32)
    params = nn.unbox(Encoder(cfg).init(jax.random.PRNGKey(0), src)["params"])

    def run(c, p):
        out, sown = jax.jit(lambda p: Encoder(c).apply({"params": p}, src, mutable=[moe.AUX_LOSS]))(p)
        return out, sum(float(np.sum(x)) for x in jax.tree.leaves(sown))

    want, aux = run(cfg, params)
    got, aux_scanned = run(cfg.replace(scan_layers=True), stack_layers(params, cfg, root="encoder"))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux_scanned, aux, rtol=1e-5)


@pytest.mark.parametrize("overrides,match", [
    (dict(num_experts=2, moe_top_k=3), "moe_top_k=3 exceeds num_experts=2"),
    (dict(num_experts=4, moe_capacity_factor=0.0), "moe_capacity_factor must be a positive number"),
    (dict(num_experts=4, moe_capacity_factor=-1.0), "moe_capacity_factor must be a positive number"),
    (dict(num_experts=-1), "num_experts must be a non-negative integer"),
    (dict(num_experts=4, moe_layers=0), "moe_layers must be a positive int"),
    (dict(num_experts=4, moe_layers=(0, 5)), r"moe_layers=\(0, 5\) must list distinct layer indices in \[0, 2\)"),
    (dict(num_experts=4, moe_load_balance_loss=-0.1), "moe_load_balance_loss must be a number >= 0"),
])
def test_bad_moe_config_is_a_named_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_experts_not_divisible_by_the_expert_axis_is_a_named_error():
    with pytest.raises(ValueError, match=r"num_experts=6 is not divisible by the expert mesh axis mesh.expert=4"):
        shd.check_experts(6, 4)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = runpy.run_path(os.path.join(repo, "configs", "default.py"))["get_config"]()  # before anything is built
    config.model.num_experts = 6
    config.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=1, expert=4, tensor=1))
    with pytest.raises(ValueError, match=r"num_experts=6 .* mesh.expert=4"):
        validate_config(config, num_devices=8, process_count=1)
    # and where a mesh meets the parameters (create_train_state resolves shardings this way)
    model = Transformer(tiny(num_experts=6, moe_layers=1))
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((4, 4), jnp.int32),
                                              jnp.ones((4, 4), jnp.int32))["params"])
    with pytest.raises(ValueError, match=r"num_experts=6 .* mesh.expert=4"):
        shd.logical_shardings(boxed, shd.make_mesh({"data": 2, "expert": 4}))
