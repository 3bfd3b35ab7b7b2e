"""transformer_jax.nnx: every model through Flax's NNX bridge equals the Linen model, trains
step for step like the Linen train step, loads a pretrained checkpoint and shards by the rules."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import transformer_jax as tj
from transformer_jax.nnx import linen_variables, load_variables, shard, to_nnx

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
RTOL = 1e-5


def tokens(key, shape, vocab, pad_tail=2):
    """Random ids in [1, vocab) with the last `pad_tail` positions of row 0 padding (id 0)."""
    x = np.array(jax.random.randint(key, shape, 1, vocab), np.int32)
    x[0, shape[1] - pad_tail:] = 0
    return jnp.asarray(x)


def random_variables(model, *inputs, seed=0, **kwargs):
    """Random Linen variables of `model`'s shapes, drawn in NumPy: no per-shape compiles of `init`."""
    shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs, **kwargs)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), shapes)


def decoder_lm(**overrides):
    return tj.DecoderLM(tj.tiny(num_encoder_layers=0, num_decoder_layers=1, **overrides))


def _models():
    enc = tj.tiny(num_decoder_layers=1, num_encoder_layers=1)
    return {
        "Transformer": (tj.Transformer(tj.tiny(num_encoder_layers=1, num_decoder_layers=1)), 2),
        "Encoder": (tj.Encoder(enc), 1),
        "EncoderClassifier": (tj.EncoderClassifier(enc.replace(num_classes=3)), 1),
        "MaskedLM": (tj.MaskedLM(enc), 1),
        "DecoderLM": (tj.DecoderLM(tj.tiny(num_encoder_layers=0, num_decoder_layers=1)), 1),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_nnx_equals_linen(name):
    model, n_inputs = _models()[name]
    keys = jax.random.split(jax.random.key(1), 3)
    inputs = [tokens(k, (2, 8), model.cfg.vocab_size) for k in keys[:n_inputs]]
    variables = random_variables(model, *inputs)
    module = to_nnx(model, *inputs, variables=variables)
    assert isinstance(module, nnx.Module)
    want = model.apply(variables, *inputs)
    np.testing.assert_allclose(module(*inputs, deterministic=True), want, rtol=RTOL, atol=1e-6)
    if isinstance(model, tj.Transformer):  # other methods go through the bridge too
        np.testing.assert_allclose(module.encode(inputs[0]), model.apply(variables, inputs[0], method="encode"),
                                   rtol=RTOL, atol=1e-6)
    back = linen_variables(module)  # and back to Linen, unchanged
    assert jax.tree.all(jax.tree.map(np.array_equal, back, variables))


def test_lazy_init_keeps_logical_axis_names():
    model = decoder_lm()
    x = tokens(jax.random.key(0), (2, 8), 64)
    module = to_nnx(model, x, rngs=nnx.Rngs(params=0))  # ToNNX + lazy_init: a real initialisation
    boxed = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    want = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    specs = nnx.get_partition_spec(nnx.state(module, nnx.Param))
    got = [v.get_value() for v in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, nnx.Variable))]
    assert len(got) == len(want) > 0 and got == want  # both in sorted path order
    kernel = module.decoder["layer_0"]["mlp"]["wi"]["kernel"]
    assert nnx.get_partition_spec(kernel).get_value() == jax.sharding.PartitionSpec("embed", "mlp")


def test_shard_by_rules_table_equals_single_device():
    """On 8 devices (fsdp 2 x tensor 4) each parameter is split by LOGICAL_RULES; outputs unchanged."""
    model = decoder_lm()
    x = tokens(jax.random.key(0), (2, 8), 64)
    module = to_nnx(model, x)
    want = module(x)
    mesh = tj.sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    shard(module, mesh)
    kernel = module.decoder["layer_0"]["mlp"]["wi"]["kernel"]  # [embed, mlp]
    assert len(kernel.get_value().sharding.device_set) == 8
    assert kernel.get_value().addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 4)
    with tj.sharding.activate(mesh):
        got = nnx.jit(lambda m, x: m(x))(module, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)


def test_dropout_draws_from_the_module_rngs():
    model = decoder_lm(dropout_rate=0.5)
    x = tokens(jax.random.key(0), (2, 8), 64)
    module = to_nnx(model, x, rngs=3)
    a, b = module(x, deterministic=False), module(x, deterministic=False)
    assert not np.allclose(a, module(x)) and not np.allclose(a, b)  # the dropout stream advances
    again = to_nnx(model, x, rngs=3)
    np.testing.assert_array_equal(again(x, deterministic=False), a)  # reproducible from the seed
    train = nnx.jit(lambda m, x: m(x, deterministic=False))  # the stream's count leaves jit too
    assert not np.allclose(train(module, x), train(module, x))


def cross_entropy(logits, targets):
    """Mean token cross-entropy over non-padding targets (id 0 is padding)."""
    weights = (targets != 0).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * weights) / jnp.sum(weights)


def test_nnx_optimizer_training_equals_linen():
    """5 AdamW steps with nnx.Optimizer + nnx.value_and_grad (nnx.jit) give the Linen losses."""
    model = tj.Transformer(tj.tiny(num_encoder_layers=1, num_decoder_layers=1))
    keys = jax.random.split(jax.random.key(7), 16)
    batches = [(tokens(keys[3 * i], (4, 8), 64), tokens(keys[3 * i + 1], (4, 8), 64),
                tokens(keys[3 * i + 2], (4, 8), 64, pad_tail=3)) for i in range(5)]
    src, tgt_in, _ = batches[0]
    params = random_variables(model, src, tgt_in, seed=15)["params"]
    tx = optax.adamw(3e-3, weight_decay=0.1)

    @jax.jit
    def linen_step(params, opt_state, batch):
        src, tgt_in, tgt_out = batch
        loss, grads = jax.value_and_grad(
            lambda p: cross_entropy(model.apply({"params": p}, src, tgt_in), tgt_out))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    linen_losses, p, opt_state = [], params, tx.init(params)
    for batch in batches:
        p, opt_state, loss = linen_step(p, opt_state, batch)
        linen_losses.append(float(loss))

    module = to_nnx(model, src, tgt_in, variables={"params": params})
    optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(module, optimizer, batch):
        src, tgt_in, tgt_out = batch
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(src, tgt_in), tgt_out))(module)
        optimizer.update(module, grads)
        return loss

    nnx_losses = [float(nnx_step(module, optimizer, batch)) for batch in batches]
    assert linen_losses[-1] < linen_losses[0]  # it trains
    np.testing.assert_allclose(nnx_losses, linen_losses, rtol=RTOL)
    trained = jax.tree.leaves(nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    np.testing.assert_allclose(jnp.concatenate([x.ravel() for x in trained]),
                               jnp.concatenate([x.ravel() for x in jax.tree.leaves(p)]), rtol=1e-4, atol=1e-6)


def test_pretrained_checkpoint_in_nnx_gives_linen_logits():
    model, variables = tj.from_pretrained(FIXTURES / "bert_cls")
    ref = dict(np.load(FIXTURES / "bert_cls" / "reference.npz"))
    x, types = ref["input_ids"], ref["token_type_ids"]
    module = to_nnx(model, x, token_types=types, variables=variables)
    want = model.apply(variables, x, token_types=types)
    got = module(x, token_types=types)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(got, ref["logits"], atol=1e-4 * np.abs(ref["logits"]).max())


def test_load_variables_names_a_mismatch():
    model = decoder_lm()
    x = tokens(jax.random.key(0), (2, 8), 64)
    module = to_nnx(model, x)
    params = random_variables(model, x)["params"]
    del params["decoder"]["layer_0"]
    with pytest.raises(ValueError, match="missing .*decoder/layer_0"):
        load_variables(module, {"params": params})
    wide = random_variables(decoder_lm(vocab_size=80), x)["params"]
    with pytest.raises(ValueError, match="variable embedding/embedding has shape \\(80, 32\\)"):
        load_variables(module, {"params": wide})
