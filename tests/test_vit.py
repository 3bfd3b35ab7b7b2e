"""Vision Transformer (transformer_jax/vit.py), the image task and the image data (data/images.py)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import transformer_jax as tj
from transformer_jax import data as D
from transformer_jax import sharding as shd
from transformer_jax import tasks
from transformer_jax.attention import BlockSparse, Dense, Windowed
from transformer_jax.model import EncoderBlock
from transformer_jax.train.experiment import build_model, config_task
from transformer_jax.train.state import create_train_state
from transformer_jax.train.step import jit_train_step, make_train_step
from transformer_jax.vit import ViT, ViTConfig, patchify

DIGITS = tasks.REGISTRY["tjax_digits"]


def _cfg(**overrides):
    return tj.tiny(**{**dict(num_encoder_layers=1, num_decoder_layers=0, num_classes=10, norm_position="pre",
                             position="learned", pooling="cls", activation="gelu"), **overrides})


def _images(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


@functools.lru_cache(maxsize=None)
def _variables(cfg, vit):
    """One initialisation per (config, geometry), shared by the tests (the attention spec does not
    change the parameters, so a Dense config initialises a sparse ViT too). Eager, not jitted: the
    applies that follow reuse its per-operation compilations."""
    x = jnp.zeros((2, *vit.image_size, vit.num_channels), jnp.float32)
    return ViT(cfg.replace(encoder_attention=Dense()), vit).init(jax.random.key(0), x)


# --- the model --------------------------------------------------------------------------------


def test_patchify_equals_numpy_loops():
    images = np.asarray(_images((2, 6, 8, 3)))
    got = np.asarray(patchify(jnp.asarray(images), (3, 2)))  # 2 x 4 grid of 3x2 patches
    want = np.zeros((2, 8, 3 * 2 * 3), np.float32)
    for b in range(2):
        for gy in range(2):
            for gx in range(4):
                patch = images[b, 3 * gy:3 * gy + 3, 2 * gx:2 * gx + 2, :]  # (row, column, channel)
                want[b, gy * 4 + gx] = patch.reshape(-1)
    np.testing.assert_array_equal(got, want)


def test_patch_embedding_equals_a_strided_conv():
    """reshape + Dense is the Conv(kernel = stride = patch) of the paper, with the kernel reshaped."""
    cfg, vit = _cfg(), ViTConfig(8, 2, 3)
    x = _images((2, 8, 8, 3), 1)
    params = _variables(cfg, vit)["params"]
    kernel = nn.unbox(params["patch_embedding"]["kernel"])  # [p*p*C D]
    bias = nn.unbox(params["patch_embedding"]["bias"])
    conv = jax.lax.conv_general_dilated(x, kernel.reshape(2, 2, 3, -1), (2, 2), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias  # [B 4 4 D]
    dense = patchify(x, (2, 2)) @ kernel + bias
    np.testing.assert_allclose(dense, conv.reshape(2, 16, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling,tokens", [("cls", 17), ("mean", 16)])
def test_shapes_and_parameters(pooling, tokens):
    cfg, vit = _cfg(pooling=pooling), ViTConfig((8, 8), 2, 1)
    model = ViT(cfg, vit)
    x = _images((3, 8, 8, 1))
    variables = _variables(cfg, vit)
    logits = model.apply(variables, x)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32 and np.isfinite(logits).all()
    params = variables["params"]
    assert params["pos_embedding"].value.shape == (tokens, 32)
    assert ("cls" in params) == (pooling == "cls")
    assert params["patch_embedding"]["kernel"].names == (None, "embed")  # logical axes for the rules table
    assert params["head"]["kernel"].names == ("embed", "classes")


@pytest.mark.parametrize("spec", [Windowed(3), BlockSparse(2, 3, 1, 1)], ids=["windowed", "block_sparse"])
def test_sparse_vit_equals_dense_vit_under_its_mask(spec):
    """A ViT with a sparse spec is the dense ViT (same weights) with the spec's mask on the scores."""
    vit, x = ViTConfig(8, 2, 1), _images((2, 8, 8, 1), 2)
    sparse = ViT(_cfg(encoder_attention=spec, pooling="mean"), vit)  # (a CLS token: see below)
    dense = ViT(_cfg(encoder_attention=Dense(), pooling="mean"), vit)
    variables = _variables(dense.cfg, vit)
    mask = spec.mask(16, 16)  # 16 patches
    assert not mask.all()  # the pattern really is sparse here
    bias = jnp.where(jnp.asarray(mask), 0.0, -1e30)[None, None]  # [1 1 T S]

    def masked(next_fun, args, kwargs, context):
        if isinstance(context.module, EncoderBlock) and context.method_name == "__call__":
            args = args[:4] + (bias,)  # x, segment_ids, positions, deterministic, bias
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(masked):
        want = dense.apply(variables, x)
    got = sparse.apply(variables, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, dense.apply(variables, x), atol=1e-3)  # and the mask matters
    if isinstance(spec, BlockSparse):  # its first block is global: a CLS token there reads every patch
        cls_sparse, cls_dense = (ViT(_cfg(encoder_attention=s), vit) for s in (spec, Dense()))
        variables = _variables(cls_dense.cfg, vit)
        np.testing.assert_allclose(cls_sparse.apply(variables, x), cls_dense.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_bad_geometry_and_inputs_are_named_errors():
    with pytest.raises(ValueError, match=r"image_size=\(8, 8\) is not a multiple of ViTConfig.patch_size=\(3, 3\)"):
        ViTConfig(8, 3, 1)
    with pytest.raises(ValueError, match="num_channels must be a positive int; got 0"):
        ViTConfig(8, 2, 0)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        ViTConfig(8, (2, 2, 2), 1)
    model, x = ViT(_cfg(), ViTConfig(8, 2, 1)), _images((2, 8, 8, 1))
    variables = _variables(model.cfg, model.vit)
    with pytest.raises(ValueError, match="images have 3 channels, but ViTConfig.num_channels=1"):
        model.apply(variables, _images((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"images are 6x8, but ViTConfig.image_size=\(8, 8\)"):
        model.apply(variables, _images((2, 6, 8, 1)))
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
        model.apply(variables, _images((8, 8, 1)))
    with pytest.raises(ValueError, match="float pixels.*uint8"):
        model.apply(variables, jnp.zeros((2, 8, 8, 1), jnp.uint8))
    with pytest.raises(ValueError, match="config.vit.patch_sizes is not an image-task option"):
        DIGITS.with_options(patch_sizes=4)
    with pytest.raises(ValueError, match=r"config.vit: .*not a multiple"):
        DIGITS.with_options(patch_size=3)
    with pytest.raises(ValueError, match="options for image tasks"):
        tasks.REGISTRY["tjax_listops"].with_options(patch_size=2)


def test_nnx_bridge_equals_linen():
    model, x = ViT(_cfg(dropout_rate=0.1), ViTConfig(8, 4, 3)), _images((2, 8, 8, 3))
    module = tj.to_nnx(model, x)
    variables = tj.nnx.linen_variables(module)
    np.testing.assert_allclose(module(x), model.apply(variables, x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(module(x, deterministic=False), module(x), atol=1e-4)  # dropout from module's rngs


# --- the task, the data and training ----------------------------------------------------------


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    D.prepare("tjax_digits", data_dir=path)
    return path


def _digits(data_dir, split, **kw):
    args = dict(layout=DIGITS.with_options(shift=1), tokenizer=None, batch_size=64, max_src_len=2, max_tgt_len=2,
                pack=False, seed=0, data_dir=data_dir)
    return D.make_iterator("tjax_digits", split, **{**args, **kw})


def test_digits_split_and_batches(digits_dir):
    splits = D.images.digits_splits()
    (xtr, ytr), (xte, yte) = splits["train"], splits["test"]
    assert xtr.shape == (1437, 8, 8, 1) and xte.shape == (360, 8, 8, 1) and xtr.dtype == np.uint8
    assert np.bincount(yte).min() >= 35  # stratified: every class 35-37 times in 360
    assert xtr.max() == 255 and set(np.unique(xtr)) <= set(np.rint(np.arange(17) * 255 / 16))
    test = list(_digits(digits_dir, "test", repeat=False))  # eval: no shifts, fill rows weigh 0
    assert len(test) == 6 and sum(b["weights"].sum() for b in test) == 360
    assert {k: (v.shape, v.dtype) for k, v in test[0].items()} == {
        "image": ((64, 8, 8, 1), np.uint8), "label": ((64,), np.int32), "weights": ((64,), np.float32)}
    stored = {img.tobytes() for img in xte}
    assert all(img.tobytes() in stored for b in test for img, w in zip(b["image"], b["weights"]) if w)
    train = next(_digits(digits_dir, "train"))  # training: shifted by up to a pixel, seeded
    again = next(_digits(digits_dir, "train"))
    np.testing.assert_array_equal(train["image"], again["image"])
    known = {img.tobytes() for img in xtr}
    assert sum(img.tobytes() not in known for img in train["image"]) > 16


def test_mnist_and_cifar10_through_tfds_without_network():
    """tfds's mnist / cifar10 builders, mocked (no download): the same batches a prepared copy yields."""
    for name, shape in (("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))):
        with tfds.testing.mock_data(num_examples=10):
            batches = list(D.make_iterator(name, "test", layout=tasks.lookup(name), tokenizer=None, batch_size=4, max_src_len=2,
                                           max_tgt_len=2, pack=False, seed=0, repeat=False))
        assert len(batches) == 3 and batches[0]["image"].shape == (4, *shape)
        assert batches[0]["image"].dtype == np.uint8 and batches[-1]["weights"].tolist() == [1, 1, 0, 0]
        assert tasks.lookup(name).vit_config().image_size == shape[:2]


def _config(**vit):
    import os
    import runpy

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "vit_digits.py")
    config = runpy.run_path(path)["get_config"]()
    config.vit.update(vit)
    return config


def test_config_picks_the_vit_and_its_patch():
    config = _config(patch_size=4)
    task = config_task(config)
    assert isinstance(task, tasks.ImageClassification) and task.patch_size == 4 and task.shift == 1
    model = build_model(config, task)
    assert isinstance(model, ViT) and model.vit.num_patches == 4
    with pytest.raises(ValueError, match="config.vit: .*not a multiple"):
        config_task(_config(patch_size=3))


def test_a_few_sharded_training_steps_lower_the_loss():
    """The train step of the loop on a (data, fsdp, tensor) = (2, 2, 2) mesh, on real digits."""
    (images, labels) = D.images.digits_splits()["train"]
    batch = {"image": images[:32], "label": labels[:32].astype(np.int32), "weights": np.ones(32, np.float32)}
    task = DIGITS
    model = task.make_model(_cfg())
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    tx = optax.adam(3e-3)
    state, shardings = create_train_state(model, tx, batch, mesh, task=task)  # (no mesh in scope: state.py)
    assert state.params["pos_embedding"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    with shd.activate(mesh):
        step, _ = jit_train_step(make_train_step(model, tx, lambda s: 3e-3, task=task), shardings, batch, mesh)
        losses = []
        for _ in range(8):
            state, metrics = step(state, shd.shard_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses


def test_scanned_vit_equals_the_unscanned_one():
    """The layers run through the Encoder's `apply_layers`: scan_layers (and remat) work here too."""
    vit, x = ViTConfig(8, 4, 1), _images((2, 8, 8, 1), 3)
    cfg = _cfg(num_encoder_layers=2)
    variables = _variables(cfg, vit)
    stacked = tj.stack_layers(variables["params"], cfg, root="encoder")  # a ViT's layers sit at its top
    want = ViT(cfg, vit).apply(variables, x)
    got = ViT(cfg.replace(scan_layers=True, remat="full"), vit).apply({"params": stacked}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
