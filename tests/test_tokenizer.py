"""`tj.load_tokenizer(dir)(...)` against the reference library's fast tokenizers on the same files.

The fixtures (tests/fixtures/tokenizers/<layout>/, made by make_tokenizer_fixtures.py in the reference
venv) hold tiny tokenizer directories in the layouts people download and, in reference.json, what the
reference's AutoTokenizer returns for every call in CALLS. Every value must be IDENTICAL: ids, type
ids, masks, offsets, word ids, sequence ids, overflow mappings and decoded text; where the reference
refuses a call, ours must raise a ValueError.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import transformer_jax as tj

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizers"
sys.path.insert(0, str(FIXTURES))
from make_tokenizer_fixtures import CALLS, LAYOUTS, QUESTIONS, CONTEXTS, TEXTS  # noqa: E402


def as_lists(value):
    return value.tolist() if hasattr(value, "tolist") else value


def check_against_reference(tok, layout: str) -> None:
    ref = json.loads((FIXTURES / layout / "reference.json").read_text(encoding="utf-8"))
    assert tok.model_input_names == ref["model_input_names"]
    assert tok.pad_token_id == ref["pad_token_id"]
    assert tok.vocab_size == ref["vocab_size"]
    for key, want in ref["special_ids"].items():
        assert getattr(tok, f"{key}_id") == want, key
    for text, ids in ref["encode"].items():
        assert tok.encode(text) == ids, text
    for name, kwargs in CALLS:
        want = ref["calls"][name]
        if "error" in want:
            with pytest.raises(ValueError):
                tok(**kwargs)
            continue
        out = tok(**kwargs)
        assert set(out) == set(want) - {"decoded", "decoded_special"}, name
        for key in out:
            assert as_lists(out[key]) == want[key], (layout, name, key)
        rows = as_lists(out["input_ids"])
        assert tok.batch_decode(rows) == want["decoded"], (layout, name)
        assert [tok.decode(r, skip_special_tokens=False) for r in rows] == want["decoded_special"], (layout, name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_identical_to_reference(layout):
    check_against_reference(tj.load_tokenizer(FIXTURES / layout), layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_save_round_trip(layout, tmp_path):
    """save() writes tokenizer.json + tokenizer_config.json; loading them gives the reference's outputs
    again (check_saved_with_reference.py checks, in the reference venv, that the reference's
    AutoTokenizer reads the same files identically too)."""
    tj.load_tokenizer(FIXTURES / layout).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    check_against_reference(tj.load_tokenizer(tmp_path), layout)


def test_outputs_are_model_ready_arrays():
    tok = tj.load_tokenizer(FIXTURES / "bert")
    out = tok(QUESTIONS, CONTEXTS, padding="max_length", truncation="only_second", max_length=20, stride=4,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    n = len(out["overflow_to_sample_mapping"])
    assert n > len(QUESTIONS)  # the contexts overflow into several windows
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert out[key].dtype == np.int32 and out[key].shape == (n, 20), key
    assert out["offset_mapping"].shape == (n, 20, 2) and out["offset_mapping"].dtype == np.int32
    assert len(out["word_ids"]) == n and all(len(w) == 20 for w in out["word_ids"])
    assert set(out.model_inputs()) == {"input_ids", "token_type_ids", "attention_mask"}
    assert set(tj.load_tokenizer(FIXTURES / "roberta")(TEXTS).model_inputs()) == {"input_ids", "attention_mask"}
    # a single string is a batch of one; unpadded rows of different lengths stay lists
    single = tok(TEXTS[0])
    assert single["input_ids"].shape == (1, len(tok.encode(TEXTS[0])))
    ragged = tok(TEXTS[:2])
    assert isinstance(ragged["input_ids"], list) and len(ragged["input_ids"]) == 2
    # padding is the pad id under a zero mask; type ids mark the second text of a pair
    padded = tok(TEXTS[:3], padding=True)
    assert (padded["input_ids"][padded["attention_mask"] == 0] == tok.pad_token_id).all()
    pair = tok(QUESTIONS[0], CONTEXTS[0])
    first_sep = int(np.argmax(pair["input_ids"][0] == tok.sep_token_id))
    types = pair["token_type_ids"][0]
    assert (types[: first_sep + 1] == 0).all() and (types[first_sep + 1:] == 1).all()


def test_decode_accepts_arrays_and_keeps_old_encode():
    tok = tj.load_tokenizer(FIXTURES / "t5")
    ids = tok.encode("The river runs through the town.")
    assert ids[-1] == tok.eos_token_id  # T5 appends EOS, as its tokenizer does
    assert tok.decode(np.asarray(ids, np.int32)) == tok.decode(ids) == "The river runs through the town."
    assert tok.batch_decode(np.asarray([ids, ids])) == ["The river runs through the town."] * 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(padding="longer"), r"padding='longer': expected True, False or one of \('longest'"),
    (dict(truncation="only_third"), r"truncation='only_third': expected True, False or one of"),
    (dict(max_length=0), r"max_length=0: expected a positive integer"),
    (dict(stride=-1), r"stride=-1: expected an integer >= 0"),
    (dict(padding_side="up"), r"padding_side='up'"),
])
def test_bad_arguments_are_named(kwargs, message):
    tok = tj.load_tokenizer(FIXTURES / "bert")
    with pytest.raises(ValueError, match=message):
        tok(TEXTS, **kwargs)


def test_bad_inputs_are_named():
    tok = tj.load_tokenizer(FIXTURES / "bert")
    with pytest.raises(ValueError, match="text=.*expected a string or a list of strings"):
        tok([1, 2, 3])
    with pytest.raises(ValueError, match=r"text_pair: expected a list as long as text \(3\)"):
        tok(QUESTIONS, CONTEXTS[:2])
    with pytest.raises(ValueError, match=r"padding=True: this tokenizer \(GPT2Tokenizer\) has no padding token"):
        tj.load_tokenizer(FIXTURES / "gpt2")(TEXTS, padding=True)


def copy_layout(layout: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / layout, tmp_path / layout))


def cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("layout, name, keep, message", [
    ("bert", "tokenizer.json", 0.5, r"tokenizer.json: not valid JSON .*truncated"),
    ("bert", "tokenizer.json", 0.0, r"tokenizer.json: not valid JSON"),
    ("t5", "spiece.model", 0.5, r"spiece.model: not a SentencePiece model .*truncated"),
    ("t5", "spiece.model", 0.0, r"spiece.model: a SentencePiece model with no pieces"),
    ("albert", "spiece.model", 0.3, r"spiece.model: not a SentencePiece model"),
    ("roberta", "vocab.json", 0.5, r"vocab.json: not valid JSON"),
    ("bert", "tokenizer_config.json", 0.5, r"tokenizer_config.json: not valid JSON"),
])
def test_broken_files_are_named(tmp_path, layout, name, keep, message):
    d = copy_layout(layout, tmp_path)
    cut(d / name, keep)
    with pytest.raises(ValueError, match=message):
        tj.load_tokenizer(d)


def test_broken_marian_and_missing_files_are_named(tmp_path):
    d = Path(shutil.copytree(Path(__file__).parent / "fixtures" / "pretrained" / "marian", tmp_path / "marian"))
    cut(d / "vocab.json", 0.5)
    with pytest.raises(ValueError, match=r"marian/vocab.json: not valid JSON"):
        tj.load_tokenizer(d)
    (d / "vocab.json").write_text('{"<pad>": "zero"}')
    with pytest.raises(ValueError, match=r"vocab.json: piece '<pad>' maps to 'zero'"):
        tj.load_tokenizer(d)
    (d / "vocab.json").write_bytes(b'{"\xff": 1}')
    with pytest.raises(ValueError, match=r"vocab.json: not UTF-8 text"):
        tj.load_tokenizer(d)
    (d / "vocab.json").write_text('{"<pad>": 0}')
    cut(d / "source.spm", 0.4)
    with pytest.raises(ValueError, match=r"marian/source.spm: not a SentencePiece model"):
        tj.load_tokenizer(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: no tokenizer files; expected one of: tokenizer.json; vocab.txt"):
        tj.load_tokenizer(empty)
    with pytest.raises(ValueError, match=r"nowhere: not a directory"):
        tj.load_tokenizer(tmp_path / "nowhere")


def test_marian_call_and_save(tmp_path):
    marian = Path(__file__).parent / "fixtures" / "pretrained" / "marian"
    tok = tj.load_tokenizer(marian)
    out = tok(["How are you?", "Good morning to you all"], padding=True)
    ids = [tok.encode("How are you?"), tok.encode("Good morning to you all")]
    width = max(map(len, ids))
    assert out["input_ids"].tolist() == [r + [tok.pad_token_id] * (width - len(r)) for r in ids]
    assert out["attention_mask"].sum(1).tolist() == [len(r) for r in ids]
    tok.save(tmp_path)
    again = tj.load_tokenizer(tmp_path)
    assert again.encode("How are you?") == ids[0] and again.decode(ids[0]) == tok.decode(ids[0])


def test_stride_longer_than_the_window_is_named():
    """The reference panics inside the tokenizers library; ours names the row and the window."""
    tok = tj.load_tokenizer(FIXTURES / "bert")
    n_question = len(tok.encode(QUESTIONS[0])) - 2
    max_length = n_question + 3 + 4  # 3 specials, 4 context tokens a window
    with pytest.raises(ValueError, match=rf"in pair 0 the other text takes {n_question} tokens, leaving windows "
                                         r"of 4 tokens .*stride must be < 4"):
        tok(QUESTIONS[:1], CONTEXTS[:1], truncation="only_second", max_length=max_length, stride=4,
            return_overflowing_tokens=True)
    windows = tok(QUESTIONS[:1], CONTEXTS[:1], truncation="only_second", max_length=max_length, stride=3,
                  return_overflowing_tokens=True)
    assert len(windows["input_ids"]) > 2
    with pytest.raises(ValueError, match=r"text 0 \(\d+ tokens\) is cut into windows of 4 tokens.*stride must be < 4"):
        tok(TEXTS[6:7], truncation=True, max_length=6, stride=4, return_overflowing_tokens=True)


def test_cli_names_a_broken_tokenizer_file(tmp_path):
    from transformer_jax import cli

    d = Path(shutil.copytree(Path(__file__).parent / "fixtures" / "pretrained" / "gpt2", tmp_path / "gpt2"))
    cut(d / "tokenizer.json", 0.5)
    (tmp_path / "in.txt").write_text("The quick brown fox\n")
    with pytest.raises(SystemExit, match=r"error: .*gpt2/tokenizer.json: not valid JSON"):
        cli.main(["decode", "--pretrained", str(d), "--input", str(tmp_path / "in.txt"), "--max_new_tokens", "2"])
