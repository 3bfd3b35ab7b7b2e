"""Long-range accuracy infrastructure: the wall-clock training budget (train/budget.py), the key-value
retrieval task (data/retrieval.py) and masked-LM self-pretraining on ListOps inputs."""

import dataclasses
import json
import os
import random
import runpy

import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import tasks
from transformer_jax.data import retrieval
from transformer_jax.train import budget

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# ----------------------------------------------------------------------------------------------
# The budget clock, with a fake time source


class FakeTime:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_clock_resumes_from_the_checkpointed_step_exactly(tmp_path):
    now = FakeTime(100.0)
    clock = budget.Clock(str(tmp_path), 1.0, 0, now=now)
    clock.start()
    now.t = 130.0
    assert clock.record(5) == pytest.approx(30.0) and not clock.expired()
    now.t = 150.0  # killed here: the 20 s after the checkpoint are redone, so not charged
    resumed = budget.Clock(str(tmp_path), 1.0, 5, now=FakeTime(1000.0))
    assert resumed.elapsed() == pytest.approx(30.0)
    resumed.start()
    resumed._now.t = 1029.0
    assert not resumed.expired()
    resumed._now.t = 1030.0
    assert resumed.expired() and resumed.elapsed() == pytest.approx(60.0) and not resumed.spent_before()
    resumed.record(9)
    assert budget.Clock(str(tmp_path), 1.0, 9, now=now).spent_before()  # restarted when done: no step
    # an unknown step (no record) starts from zero; no budget never expires
    assert budget.Clock(str(tmp_path), 1.0, 7, now=now).elapsed() == 0.0
    assert not budget.Clock(str(tmp_path), 0.0, 5, now=now).expired()
    assert json.load(open(tmp_path / budget.BUDGET_FILE))["elapsed_s"] == {"5": pytest.approx(30.0),
                                                                           "9": pytest.approx(60.0)}


def test_clock_eval_every_minutes_marks_advance_once():
    now = FakeTime()
    clock = budget.Clock("/nonexistent", 0.0, 0, eval_every_minutes=0.5, writer=False, now=now)
    clock.start()
    now.t = 29.0
    assert not clock.eval_due()
    now.t = 31.0
    assert clock.eval_due()
    clock.evaluated()
    assert not clock.eval_due()
    clock.evaluated()  # asked by another process while this one lags: no second eval at 60 s
    now.t = 61.0
    assert not clock.eval_due()
    now.t = 91.0
    assert clock.eval_due()


def test_clock_does_not_charge_paused_time():
    now = FakeTime()
    clock = budget.Clock("/nonexistent", 1.0, 0, writer=False, now=now)
    clock.start()
    now.t = 20.0
    with clock.paused():  # an evaluation
        now.t = 50.0
    assert clock.elapsed() == pytest.approx(20.0)
    now.t = 89.0
    assert not clock.expired()
    now.t = 90.0
    assert clock.expired()


@pytest.mark.parametrize("field,value", [("budget_minutes", -1.0), ("eval_every_minutes", float("nan")),
                                          ("eval_every_minutes", -0.5)])
def test_bad_minutes_is_a_named_error(field, value):
    from transformer_jax.train.experiment import validate_config

    c = runpy.run_path(os.path.join(CONFIGS, "retrieval.py"))["get_config"]()
    c[field] = value
    with pytest.raises(ValueError, match=f"config.{field}="):
        validate_config(c)


# ----------------------------------------------------------------------------------------------
# Key-value retrieval


def test_retrieval_is_seeded_and_labels_are_right():
    kw = dict(length=128, num_pairs=4, num_keys=10, num_values=10, min_distance=48)
    a = list(retrieval.generate(200, seed=3, **kw))
    assert a == list(retrieval.generate(200, seed=3, **kw))
    assert a != list(retrieval.generate(200, seed=4, **kw))
    labels = set()
    for text, label in a:
        assert len(text) == 128 and text[0] == retrieval.CLS and text[-2] == retrieval.QUERY
        found, distance = retrieval.answer(text)
        assert found == label and distance > 48  # from the marker and from the query
        assert sum(ch in retrieval.KEYS for ch in text[:-1]) == 4  # distinct keys, each bound once
        labels.add(label)
    assert labels == set(range(10))


def test_retrieval_answer_rejects_malformed_text_and_bad_settings():
    text, _ = retrieval.example(random.Random(0), length=40, num_pairs=2, num_keys=4, num_values=5, min_distance=8)
    with pytest.raises(ValueError, match="not a retrieval example"):
        retrieval.answer(text[1:])
    with pytest.raises(ValueError, match="bound 2 times"):
        retrieval.answer(text[:5] + text[-1] + "0" + text[7:])
    with pytest.raises(ValueError, match="min_distance=30"):
        list(retrieval.generate(1, length=64, min_distance=30))
    with pytest.raises(ValueError, match="num_pairs=9"):
        list(retrieval.generate(1, num_pairs=9, num_keys=8))
    with pytest.raises(ValueError, match="filler='a1'"):
        list(retrieval.generate(1, filler="a1"))


def test_registry_knows_the_long_range_tasks():
    assert tasks.lookup("tjax_retrieval/small") == tasks.Classification("text", "label")
    assert isinstance(tasks.resolve("tjax_listops/small", "masked_lm"), tasks.MaskedLM)
    from transformer_jax.data import make_tokenizer

    tok = make_tokenizer("listops")
    assert tok.mask_id == 19 and tok.encode("[MAX 3 ]") == [5, 12, 8]  # ids of the expression unchanged


# ----------------------------------------------------------------------------------------------
# End to end: a tiny run under a budget stops, is tested on its best checkpoint, and resumes


def _tiny_retrieval(tmp_path, **overrides):
    c = runpy.run_path(os.path.join(CONFIGS, "retrieval.py"))["get_config"]()
    c.model.update(d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1, max_len=64)
    c.data.update(dataset="tjax_retrieval/tiny", max_src_len=64, data_dir=str(tmp_path / "tfds"))
    c.update(batch_size=8, log_every=1, eval_every=0, eval_every_minutes=1e-9, async_checkpoints=False,
             **overrides)
    return c


def test_budget_stops_tests_the_best_checkpoint_and_survives_restart(tmp_path):
    from transformer_jax.train import read_metrics, train

    workdir = str(tmp_path / "run")
    out = train(_tiny_retrieval(tmp_path, budget_minutes=1e-9), workdir, progress=False)
    assert out["step"] == 1 and out["out_of_time"]  # the budget ran out after the first step
    recorded = json.load(open(os.path.join(workdir, budget.BUDGET_FILE)))["elapsed_s"]
    assert list(recorded) == ["1"] and recorded["1"] > 0
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert result["split"] == "test" and result["checkpoint_step"] == 1 and 0 <= result["accuracy"] <= 1

    # restarted with more time: continues from step 1's recorded time, evaluates, tests the best
    more = train(_tiny_retrieval(tmp_path, budget_minutes=10.0, num_train_steps=3), workdir, progress=False)
    assert more["start_step"] == 1 and more["step"] == 3 and not more["out_of_time"]
    recorded = json.load(open(os.path.join(workdir, budget.BUDGET_FILE)))["elapsed_s"]
    assert recorded["3"] > recorded["1"] and more["train_seconds"] >= recorded["3"]
    accuracy = {s: r["eval_accuracy"] for s, r in read_metrics(workdir).items() if "eval_accuracy" in r}
    assert sorted(accuracy) == [1, 2, 3]
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert accuracy[result["checkpoint_step"]] == max(accuracy.values()) and result["step"] == 3


# ----------------------------------------------------------------------------------------------
# Evaluation batches regrouped by length and trimmed (data/pipeline.length_sorted)


def _padded_batches(lengths, batch, width):
    rows = []
    for i, n in enumerate(lengths):
        seg = np.zeros(width, np.int32)
        seg[:n] = 1
        rows.append({"segment_ids": seg, "inputs": seg * (i + 3), "label": np.int32(i)})
    return [{k: np.stack([r[k] for r in rows[s:s + batch]]) for k in rows[0]} for s in range(0, len(rows), batch)]


def test_length_sorted_keeps_every_row_and_trims_within_windows():
    from transformer_jax.data.pipeline import length_sorted

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, 40).tolist()
    batches = _padded_batches(lengths, batch=4, width=512)
    out = list(length_sorted(batches, ("segment_ids", "inputs"), window=3, multiple=128))
    assert len(out) == len(batches) and all(len(b["label"]) == 4 for b in out)
    for b in out:
        width = b["inputs"].shape[1]
        longest = int(b["segment_ids"].sum(axis=1).max())
        assert width in (128, 256, 384, 512) and width - 128 < longest <= width and b["segment_ids"].shape[1] == width
        for label, row in zip(b["label"], b["inputs"]):  # each row intact: its tokens, its label
            assert (row != 0).sum() == lengths[label] and set(row[row != 0]) == {label + 3}
    # the first window (3 batches = 12 rows) holds the first 12 rows of the split, shortest first
    first = np.concatenate([b["label"] for b in out[:3]])
    assert sorted(first.tolist()) == list(range(12))
    assert [lengths[i] for i in first] == sorted(lengths[:12])
    assert sorted(np.concatenate([b["label"] for b in out]).tolist()) == list(range(40))


def test_length_invariant_models_trim_evaluation_and_score_the_same(tmp_path, monkeypatch):
    import jax

    from transformer_jax import attention as A
    from transformer_jax.data.pipeline import length_sorted
    from transformer_jax.train import evaluate, loop
    from transformer_jax.train.build import make_data_iterator

    assert A.Windowed(8).length_invariant and A.Dense().length_invariant and not A.BlockSparse().length_invariant
    c = runpy.run_path(os.path.join(CONFIGS, "listops.py"))["get_config"]()
    c.model.update(d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1, max_len=200,
                   encoder_attention=A.Windowed(16), pooling="cls")
    c.data.update(dataset="tjax_listops/tiny", max_src_len=200)
    c.batch_size = 8
    s, _ = loop.setup(c, str(tmp_path / "w"))
    assert s.model.cfg.length_invariant and evaluate.trims_padding(s)
    params = jax.jit(lambda p: jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), p))(
        s.state.params)  # not the init: a classifier whose outputs vary with the input
    batches = lambda: make_data_iterator(c, "validation", s.tokenizer, repeat=False, task=s.task)  # noqa: E731
    widths = {b["inputs"].shape[1] for b in length_sorted(batches(), s.task.trim_keys)}
    assert widths <= {128, 200} and 128 in widths  # tiny ListOps: 50-200 tokens
    trimmed = evaluate.evaluate_loss(s, params, batches())
    monkeypatch.setattr(evaluate, "trims_padding", lambda s: False)
    full = evaluate.evaluate_loss(s, params, batches())
    assert trimmed["eval_tokens"] == full["eval_tokens"] == 50
    assert trimmed["eval_accuracy"] == full["eval_accuracy"]
    assert trimmed["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-5)
    # BlockSparse places its blocks by the padded length: never trimmed
    assert not dataclasses.replace(s.model.cfg, encoder_attention=A.BlockSparse(block_size=16)).length_invariant
