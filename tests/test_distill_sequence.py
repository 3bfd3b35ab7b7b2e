"""Sequence-level knowledge distillation (transformer_jax/train/sequence_kd.py, Kim & Rush 2016):
the teacher's beam outputs cached once as the student's targets, reused on resume (exact), a cache
that no longer fits refused (with checkpoints) or regenerated (without), and the config's errors."""

import json
import os

import jax
import numpy as np
import pytest

from transformer_jax import cli
from transformer_jax.train import sequence_kd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT = "train[:24]"


def _args(workdir, *extra):  # bytes: no SentencePiece to train on the 64k-example train split
    return ["train", "--config", os.path.join(REPO, "configs", "tiny.py"), "--workdir", str(workdir),
            f"--config.data.train_split={SPLIT}", "--config.data.tokenizer=byte", "--config.data.max_tgt_len=12", "--config.decode.batch_size=32",
            "--config.checkpoint_every=2", "--config.test_at_end=False", *extra]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("seqkd") / "teacher"
    cli.main(_args(path, "--config.model.num_encoder_layers=2", "--config.model.num_decoder_layers=2",
                   "--config.num_train_steps=4"))
    return path


def _student(teacher, *extra):
    return [f"--config.distill.teacher={teacher}", "--config.distill.sequence_level=True",
            "--config.distill.beam_size=2", *extra]


def _final(workdir):
    from transformer_jax import sharding as shd
    from transformer_jax.train.warm_start import source_params

    mesh = shd.make_mesh(shd.resolve_mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, jax.device_count()))
    params, _ = source_params(str(workdir), mesh)
    return {k: np.asarray(v) for k, v in params.items()}


def _teacher_translations(teacher):
    """The reference: the teacher's latest checkpoint translating the split with the library's beam search."""
    from transformer_jax.tasks.seq2seq import translate
    from transformer_jax.train.build import load_config, restore_for_eval, split_records
    from transformer_jax.train.evaluate import predictor

    config = load_config(str(teacher))
    s, state, _ = restore_for_eval(config, str(teacher))
    sources = [r["source"].decode() for r in split_records(config, SPLIT, s.task)]
    return sources, translate(predictor(s, state.params), sources, beam_size=2, max_len=12, length_penalty=0.6,
                              batch_size=32, src_len=config.data.max_src_len)


def test_student_trains_on_the_cached_teacher_translations_and_resumes_exactly(teacher, tmp_path, capsys):
    """Seq-KD + word-KD (alpha 0.5): the cache holds the teacher's beam outputs for the split's sources,
    in order; a run cut at step 2 reuses it and ends bitwise equal to a straight run; resuming with
    another beam size is an `error:` naming the field and both values."""
    student = _student(teacher, "--config.distill.alpha=0.5")
    capsys.readouterr()
    cli.main(_args(tmp_path / "straight", *student, "--config.num_train_steps=4"))
    out = capsys.readouterr().out
    assert "translating 24 sources with the teacher (step 4 of" in out
    manifest, targets = sequence_kd.read_cache(str(tmp_path / "straight"))
    sources, want = _teacher_translations(teacher)
    assert targets == want
    assert manifest["examples"] == 24 and manifest["split"] == SPLIT and manifest["teacher_checkpoint"] == "step 4"
    assert manifest["beam_size"] == 2 and manifest["max_len"] == 12
    assert manifest["source_sha256"] == sequence_kd.source_fingerprint(sources)
    records = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
    assert sum("kd_loss" in r for r in records) == 4  # alpha < 1: the teacher's soft targets too

    cli.main(_args(tmp_path / "cut", *student, "--config.num_train_steps=2"))
    capsys.readouterr()
    cli.main(_args(tmp_path / "cut", *student, "--config.num_train_steps=4"))
    out = capsys.readouterr().out
    assert "sequence-level targets from the cache" in out and "translating" not in out
    assert "resumed from checkpoint at step 2" in out
    a, b = _final(tmp_path / "straight"), _final(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])

    with pytest.raises(SystemExit, match=r"error: config.distill.sequence_level: the cached teacher outputs "
                                         r"\(.*manifest.json\) do not fit this run \(beam_size: cached 2, this run 1\)"):
        cli.main(_args(tmp_path / "cut", *_student(teacher, "--config.distill.alpha=0.5")[:2],
                       "--config.distill.beam_size=1", "--config.num_train_steps=6"))


def test_pure_sequence_level_kd_leaves_the_teacher_out_of_the_step_and_a_stale_cache_is_regenerated(
        teacher, tmp_path, capsys):
    """alpha = 1: the targets alone (no kd_loss, no teacher forward). A workdir with no checkpoint
    whose cache was made for other settings regenerates it."""
    work = tmp_path / "pure"
    sequence_kd.write_cache(str(work), {"teacher": "elsewhere", "examples": 1}, ["stale"])
    capsys.readouterr()
    cli.main(_args(work, *_student(teacher, "--config.distill.alpha=1.0"), "--config.num_train_steps=2"))
    out = capsys.readouterr().out
    assert "does not fit this run (teacher: cached 'elsewhere'" in out and "no checkpoint yet: regenerating" in out
    assert "the teacher stays out of the train step" in out
    manifest, targets = sequence_kd.read_cache(str(work))
    assert len(targets) == 24 and manifest["teacher"] == os.path.abspath(teacher)
    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    assert not any("kd_loss" in r for r in records) and len(records) == 2

    # the trainer's iterator reads those records: its rows' targets are the teacher's text, not the references
    from transformer_jax.data.tokenizers import ByteTokenizer
    from transformer_jax.train.build import load_config, make_data_iterator, split_records
    from transformer_jax import tasks

    config, task, tok = load_config(str(work)), tasks.lookup("tjax_numbers"), ByteTokenizer()
    refs = split_records(config, SPLIT, task)
    it = make_data_iterator(config, SPLIT, tok, repeat=False, task=task, batch_size=8,
                            records=[{**r, "target": t} for r, t in zip(refs, targets)])
    assert it.get_state()["pipeline"]["task"] == "tjax_numbers+sequence_kd"
    rows = next(it)["tgt_out"]
    assert [tok.decode(row) for row in rows] == [t.encode()[:11].decode("utf-8", "replace") for t in targets[:8]]


def test_the_cache_is_written_atomically_and_a_damaged_one_is_not_read(tmp_path):
    targets = ["the fifth of may", "", "forty-two dollars \u00e9"]
    sequence_kd.write_cache(str(tmp_path), {"examples": 3, "teacher": "t"}, targets)
    assert sorted(os.listdir(tmp_path / "sequence_kd")) == ["manifest.json", "targets.jsonl"]  # no temporaries
    manifest, read = sequence_kd.read_cache(str(tmp_path))
    assert read == targets and manifest["teacher"] == "t"
    with open(tmp_path / "sequence_kd" / "targets.jsonl", "a") as f:
        f.write('"one more"\n')
    assert sequence_kd.read_cache(str(tmp_path))[1] is None
    assert sequence_kd.read_cache(str(tmp_path / "nothing")) is None
    wanted = {k: 1 for k in sequence_kd.MATCH_KEYS}
    assert sequence_kd.differences(dict(wanted), wanted) == []
    assert sequence_kd.differences({**wanted, "split": "train"}, wanted) == [("split", "train", 1)]
    assert sequence_kd.source_fingerprint(["a b", "c"]) != sequence_kd.source_fingerprint(["a", "b c"])


def _config(**distill):
    import runpy

    c = runpy.run_path(os.path.join(REPO, "configs", "tiny.py"))["get_config"]()
    c.distill.update(distill)
    return c


def test_sequence_level_settings_are_checked_by_name(tmp_path):
    from transformer_jax.train import distill

    teacher = str(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # a directory that passes for a Hugging Face teacher
    with pytest.raises(ValueError, match=r"config.distill.sequence_level=True needs config.distill.teacher"):
        distill.check_config(_config(sequence_level=True))
    with pytest.raises(ValueError, match=r"config.distill.beam_size=0 must be a positive integer"):
        distill.check_config(_config(teacher=teacher, sequence_level=True, beam_size=0))
    with pytest.raises(ValueError, match=r"config.distill.length_penalty=nan must be a finite number"):
        distill.check_config(_config(teacher=teacher, sequence_level=True, length_penalty=float("nan")))
    c = _config(teacher=teacher, sequence_level=True)
    c.data.dataset = "tjax_text"
    c.model_type = "encoder_classifier"
    with pytest.raises(ValueError, match=r"sequence_level=True needs a sequence-to-sequence task .*'tjax_text' is a "
                                         r"classification task"):
        distill.check_config(c)
    distill.check_config(_config(teacher=teacher, sequence_level=True))  # a translation task: fine


def test_train_split_takes_tfds_split_syntax_and_is_refused_where_there_is_one_split():
    from transformer_jax.train.build import train_split

    c = _config()
    assert train_split(c) == "train"
    c.data.train_split = "train[:8000]"
    assert train_split(c) == "train[:8000]"
    c.data.dataset = "synthetic"
    with pytest.raises(ValueError, match=r"config.data.train_split='train\[:8000\]': synthetic data has one train "
                                         r"split; leave it 'train'"):
        train_split(c)


def test_a_seq2seq_student_on_files_trains_on_the_t5_teachers_beam_outputs(tmp_path, capsys):
    """config.task=seq2seq (a Hugging Face T5 fine-tuned on JSONL files): the teacher's outputs, made
    with the checkpoint's generation settings and the task's prefix, are the cached targets (equal to
    `generate_text` on the teacher directly), and the student trains on them."""
    import shutil

    from transformer_jax.pretrained import from_pretrained, load_generation_config, load_tokenizer
    from transformer_jax.pretrained.text import generate_text

    fixture = os.path.join(REPO, "tests", "fixtures", "pretrained", "t5")
    teacher = tmp_path / "t5"
    shutil.copytree(fixture, teacher, ignore=shutil.ignore_patterns("reference*"))
    words = "the dog river book model student town music fox text corpus".split()
    rng = np.random.default_rng(0)
    rows = [" ".join(rng.choice(words, 4)) for _ in range(16)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"document": r, "summary": r.split()[0]}) + "\n" for r in rows))
    work = tmp_path / "student"
    capsys.readouterr()
    cli.main(["train", "--config", os.path.join(REPO, "configs", "finetune_seq2seq.py"), "--workdir", str(work),
              f"--config.init_from={teacher}", f"--config.data.train_files={train}", "--config.num_epochs=1",
              "--config.batch_size=8", "--config.data.max_src_len=16", "--config.data.max_tgt_len=8",
              "--config.data.prefix=summarize: ", "--config.decode.max_len=6", "--config.test_at_end=False",
              f"--config.distill.teacher={teacher}", "--config.distill.sequence_level=True",
              "--config.distill.alpha=1.0", "--config.distill.beam_size=2"])
    out = capsys.readouterr().out
    assert "translating 16 sources with the teacher (Hugging Face checkpoint" in out
    manifest, targets = sequence_kd.read_cache(str(work))
    model, variables = from_pretrained(str(teacher))
    want = generate_text(model, variables, load_tokenizer(str(teacher)), [f"summarize: {r}" for r in rows],
                         generation_config=load_generation_config(str(teacher)), max_new_tokens=6, beam_size=2,
                         batch_size=32)
    assert targets == want and manifest["max_len"] == 6 and manifest["target_feature"] == "target"
    assert manifest["source_sha256"] == sequence_kd.source_fingerprint([f"summarize: {r}" for r in rows])
    assert len([json.loads(x) for x in open(work / "metrics.jsonl")]) >= 1
