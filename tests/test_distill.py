"""Knowledge distillation (transformer_jax/train/distill.py): the loss against a float64 NumPy
reference, the distilled step on a classifier, every-other-layer initialisation, and a student
trained (and resumed exactly) from the command line with a teacher workdir."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import cli
from transformer_jax.config import TransformerConfig
from transformer_jax.model import EncoderClassifier
from transformer_jax.train import distill
from transformer_jax.train.step import _loss_sums, StepConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _np_kd(student, teacher, weights, T):
    """Σ weight · T² · KL(softmax(teacher/T) || softmax(student/T)) in float64."""
    def log_softmax(x):
        x = x / T
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ls, lt = log_softmax(np.float64(student)), log_softmax(np.float64(teacher))
    return float(np.sum(weights * np.sum(np.exp(lt) * (lt - ls), -1)) * T * T)


def _np_ce(logits, targets, weights):
    x = np.float64(logits)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    return float(np.sum(weights * (lse - np.take_along_axis(x, targets[..., None], -1)[..., 0])))


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 11)])  # [B C] classification; [B T V] per token
@pytest.mark.parametrize("T,alpha", [(1.0, 0.0), (2.0, 0.5), (4.0, 0.9)])
def test_kd_loss_matches_a_float64_reference(shape, T, alpha):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=shape) * 3, rng.normal(size=shape) * 3
    weights = (rng.random(shape[:-1]) > 0.3).astype(np.float32)
    targets = rng.integers(0, shape[-1], size=shape[:-1])
    soft = distill.soft_target_sums(jnp.float32(s), jnp.float32(t), jnp.asarray(weights), T)
    np.testing.assert_allclose(float(soft), _np_kd(s, t, weights, T), rtol=1e-5, atol=1e-5)
    sums = {"loss": jnp.float32(_np_ce(s, targets, weights)), "weight": jnp.sum(weights)}
    mixed = distill.mix(sums, soft, alpha)
    np.testing.assert_allclose(float(mixed["loss"]), alpha * _np_ce(s, targets, weights)
                               + (1 - alpha) * _np_kd(s, t, weights, T), rtol=1e-5)
    # a tuple of outputs (QA's start and end logits) is averaged
    pair = distill.soft_target_sums((jnp.float32(s), jnp.float32(t)), (jnp.float32(t), jnp.float32(s)),
                                    jnp.asarray(weights), T)
    np.testing.assert_allclose(float(pair), (_np_kd(s, t, weights, T) + _np_kd(t, s, weights, T)) / 2, rtol=1e-5)
    # identical distributions: zero; the gradient reaches the student only
    assert abs(float(distill.soft_target_sums(jnp.float32(t), jnp.float32(t), jnp.asarray(weights), T))) < 1e-5


def _classifier(layers, vocab=50, classes=3):
    cfg = TransformerConfig(vocab_size=vocab, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=layers,
                            num_decoder_layers=0, max_len=16, num_classes=classes, dropout_rate=0.0)
    model = EncoderClassifier(cfg)
    params = model.init(jax.random.PRNGKey(layers), jnp.ones((2, 8), jnp.int32))["params"]
    return model, params


def test_distilled_step_loss_on_a_classifier_equals_the_reference():
    """The hook inside `_loss_sums`: the teacher's forward on the same batch, the task's weights."""
    from transformer_jax import tasks

    student, s_params = _classifier(1)
    teacher_model, t_params = _classifier(2)
    task = tasks.for_model(student)
    rng = np.random.default_rng(1)
    batch = {"inputs": rng.integers(1, 50, size=(4, 8)).astype(np.int32), "label": np.array([0, 2, 1, 0], np.int32)}
    batch["inputs"][3] = 0  # an all-padding row weighs 0
    args, kwargs = task.model_inputs(batch)
    s_logits = np.asarray(student.apply({"params": s_params}, *args, **kwargs))
    t_logits = np.asarray(teacher_model.apply({"params": t_params}, *args, **kwargs))
    teacher = distill.Teacher(teacher_model, t_params, None, temperature=3.0, alpha=0.25, where="test")
    sums = _loss_sums(student, s_params, batch, None, deterministic=True, cfg=StepConfig(), task=task,
                      extra=teacher.loss_hook(task, t_params))
    w = np.array([1, 1, 1, 0.0])
    want = 0.25 * _np_ce(s_logits, batch["label"], w) + 0.75 * _np_kd(s_logits, t_logits, w, 3.0)
    np.testing.assert_allclose(float(sums["loss"]), want, rtol=1e-5)
    np.testing.assert_allclose(float(sums["kd_loss"]), _np_kd(s_logits, t_logits, w, 3.0), rtol=1e-5)


def test_every_other_layer_and_an_explicit_map_copy_the_right_layers():
    teacher_model, t_params = _classifier(4)
    student_model, s_params = _classifier(2)
    for layer_map, want in (("every_other", (0, 2)), ((3, 1), (3, 1))):
        source = distill.student_source(t_params, teacher_model.cfg, s_params, student_model.cfg, layer_map)
        for i, j in enumerate(want):
            for name, value in source.items():
                if name.startswith(f"encoder/layer_{i}/"):
                    rest = name[len(f"encoder/layer_{i}/"):].split("/")
                    expected = t_params["encoder"][f"layer_{j}"]
                    for part in rest:
                        expected = expected[part]
                    np.testing.assert_array_equal(value, expected)
        assert not any(n.startswith("encoder/layer_2/") for n in source)
        np.testing.assert_array_equal(source["classifier/kernel"], t_params["classifier"]["kernel"])
    with pytest.raises(ValueError, match=r"init_from_teacher=.*teacher's encoder has 4"):
        distill.student_source(t_params, teacher_model.cfg, _classifier(3)[1], _classifier(3)[0].cfg, "every_other")
    with pytest.raises(ValueError, match=r"names 3 layers, but the student's encoder has 2"):
        distill.student_source(t_params, teacher_model.cfg, s_params, student_model.cfg, (0, 1, 2))
    with pytest.raises(ValueError, match=r"config.distill.init_from_teacher='every_third'"):
        distill.parse_layer_map("every_third")
    assert distill.parse_layer_map("0,2, 5") == (0, 2, 5) == distill.parse_layer_map("(0, 2, 5)")


def _train_args(workdir, *extra):
    return ["train", "--config", os.path.join(REPO, "configs", "tiny.py"), "--workdir", str(workdir),
            "--config.data.dataset=synthetic", "--config.model.vocab_size=64", "--config.data.max_src_len=8",
            "--config.checkpoint_every=2", "--config.log_every=1", *extra]


def _final(workdir):
    from transformer_jax import sharding as shd
    from transformer_jax.train.warm_start import source_params

    mesh = shd.make_mesh(shd.resolve_mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, jax.device_count()))
    params, where = source_params(str(workdir), mesh)
    return {k: np.asarray(v) for k, v in params.items()}


def test_student_distilled_from_the_command_line_resumes_exactly(tmp_path, capsys):
    """A seq2seq teacher (2+2 layers) distils word-level into a 1+1-layer student initialised from
    its layers 0; the log names the teacher and kd_loss is reported; a run cut at step 2 and
    resumed (the teacher reloaded) ends bitwise equal to a straight run. A teacher with another
    vocabulary is an `error:` naming both."""
    teacher = tmp_path / "teacher"
    cli.main(_train_args(teacher, "--config.model.num_encoder_layers=2", "--config.model.num_decoder_layers=2",
                         "--config.num_train_steps=4"))
    student = ["--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
               f"--config.distill.teacher={teacher}", "--config.distill.temperature=2.0",
               "--config.distill.alpha=0.3", "--config.distill.init_from_teacher=every_other"]
    capsys.readouterr()
    cli.main(_train_args(tmp_path / "straight", *student, "--config.num_train_steps=4"))
    out = capsys.readouterr().out
    assert "distill: teacher Transformer" in out and "student initialised from the teacher" in out
    records = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
    kd = [r["kd_loss"] for r in records if "kd_loss" in r]
    assert len(kd) == 4 and all(np.isfinite(kd)) and kd[0] > 0
    cli.main(_train_args(tmp_path / "cut", *student, "--config.num_train_steps=2"))
    cli.main(_train_args(tmp_path / "cut", *student, "--config.num_train_steps=4"))
    out = capsys.readouterr().out
    assert "resumed from checkpoint at step 2" in out
    a, b = _final(tmp_path / "straight"), _final(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])

    with pytest.raises(SystemExit, match=r"error: config.distill.teacher=.* has vocab_size=64 .*student has "
                                         r"vocab_size=80"):
        cli.main(_train_args(tmp_path / "bad", *student[:2], f"--config.distill.teacher={teacher}",
                             "--config.model.vocab_size=80"))
    assert not os.path.exists(tmp_path / "bad")  # refused before the workdir was made


def test_a_hugging_face_teacher_is_loaded_onto_the_mesh_and_a_vocabulary_mismatch_names_both(tmp_path):
    """A masked-LM teacher directory (save_pretrained): loaded with its parameters placed on the mesh,
    its forward matching the saved model's; a student with another vocabulary is refused."""
    import transformer_jax as tj
    from transformer_jax import sharding as shd
    from transformer_jax import tasks

    cfg = tj.TransformerConfig(vocab_size=64, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=2,
                               num_decoder_layers=0, max_len=16, dropout_rate=0.0, position="learned",
                               activation="gelu", embed_scale=False, embed_norm=True, logits_bias=True,
                               type_vocab_size=2, norm_eps=1e-12, pooling="cls")
    mlm = tj.MaskedLM(cfg)
    variables = mlm.init(jax.random.PRNGKey(3), np.ones((1, 8), np.int32))
    tj.save_pretrained(mlm, variables, tmp_path / "hf")
    student = tj.MaskedLM(cfg.replace(num_encoder_layers=1))
    task = tasks.for_model(student)
    example = task.batch_shapes(8, 8, 8)
    mesh = shd.make_mesh(shd.resolve_mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, jax.device_count()))
    model, params, shardings, where = distill._teacher_model_and_params(str(tmp_path / "hf"), mesh, task, example,
                                                                       student)
    assert type(model) is tj.MaskedLM and "Hugging Face" in where
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8) + 5
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, tokens)),
                               np.asarray(mlm.apply(variables, tokens)), atol=1e-5)
    with pytest.raises(ValueError, match=r"config.distill.teacher=.* has vocab_size=64 .*config.json.*student has "
                                         r"vocab_size=80"):
        distill._teacher_model_and_params(str(tmp_path / "hf"), mesh, task, example,
                                          tj.MaskedLM(cfg.replace(vocab_size=80, num_encoder_layers=1)))
