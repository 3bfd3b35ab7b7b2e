"""transformer_jax.data.files: the user's files read through a line index, checked up front, with
errors that name the file and the line, and Grain's shuffle/epochs/shards/resume on top."""

import json
import pickle

import numpy as np
import pytest

from transformer_jax.data import files as F


def _write(path, text, mode="w"):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(path, rows):
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


ROWS = [{"sentence1": f"premise {i}", "sentence2": f"hypothesis {i}", "label": ["no", "yes", "maybe"][i % 3]}
        for i in range(7)]


def test_jsonl_reads_each_row_by_index_with_labels_as_sorted_ids(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", ROWS)
    labels = F.derive_labels(path)
    assert labels == ("maybe", "no", "yes")
    src = F.open_files(path, ("text", "label"), optional=("text_pair",), labels=labels)
    assert len(src) == 7
    for i in (6, 0, 3):  # any order
        r = src[i]
        assert r == {"text": f"premise {i}", "text_pair": f"hypothesis {i}", "label": labels.index(ROWS[i]["label"])}
    assert src.where(4) == (path, 5)


def test_csv_tsv_text_and_json_give_the_same_records(tmp_path):
    rows = [{"text": 'say "hi",\nthen go', "label": 2}, {"text": "plain", "label": 10}, {"text": "ü €", "label": 2}]
    csv_path = _write(tmp_path / "a.csv", 'text,label\n"say ""hi"",\nthen go",2\n\nplain,10\r\nü €,2\n')
    tsv_path = _write(tmp_path / "a.tsv", "label\ttext\n2\tsay \"hi\",\n10\tplain\n2\tü €\n")
    json_path = _write(tmp_path / "a.json", json.dumps(rows, indent=2))
    data_path = _write(tmp_path / "b.json", json.dumps({"data": rows}))
    for path, first in ((csv_path, rows[0]["text"]), (tsv_path, 'say "hi",'), (json_path, rows[0]["text"]),
                        (data_path, rows[0]["text"])):
        labels = F.derive_labels(path)
        assert labels == ("2", "10"), path  # integers sort as numbers
        src = F.open_files(path, ("text", "label"), labels=labels)
        assert [src[i] for i in range(3)] == [{"text": first, "label": 0}, {"text": "plain", "label": 1},
                                              {"text": "ü €", "label": 0}], path
    assert F.open_files(csv_path, ("text",)).where(1) == (csv_path, 5)  # the blank line and 2-line record counted
    txt = F.open_files(_write(tmp_path / "a.txt", "one line\n\n  \nsecond line\n"), ("text",))
    assert [txt[0], txt[1]] == [{"text": "one line"}, {"text": "second line"}]


def test_squad_json_is_flattened_to_question_records(tmp_path):
    ctx = "The cat sat on the mat in Paris."
    squad = {"version": "1.1", "data": [{"title": "Cats", "paragraphs": [{"context": ctx, "qas": [
        {"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 26},
                                                       {"text": "in Paris", "answer_start": 23}]},
        {"id": "q2", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]}]}]}]}
    path = _write(tmp_path / "dev-v1.1.json", json.dumps(squad))
    src = F.open_files(path, ("question", "context", "answers", "id"))
    assert len(src) == 2
    assert src[0] == {"question": "Where?", "context": ctx, "id": "q1",
                      "answers": {"text": ["Paris", "in Paris"], "answer_start": [26, 23]}}
    src[1]["answers"]["text"].append("mutated")
    assert src[1]["answers"] == {"text": ["The cat"], "answer_start": [0]}  # records are copies


def test_ner_tags_as_names_or_class_ids(tmp_path):
    rows = [{"tokens": ["Ann", "lives", "in", "Oslo"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]},
            {"tokens": ["Bo"], "ner_tags": ["B-PER"]}]
    path = _jsonl(tmp_path / "ner.jsonl", rows)
    tags = F.derive_labels(path, "tags")
    assert tags == ("B-LOC", "B-PER", "O")
    src = F.open_files(path, ("tokens", "tags"), labels=tags)
    assert src[0] == {"tokens": rows[0]["tokens"], "tags": [1, 2, 2, 0]}
    ids = _jsonl(tmp_path / "ids.jsonl", [{"tokens": ["x", "y"], "tags": [2, 0]}])  # ClassLabel ids
    assert F.open_files(ids, ("tokens", "tags"), labels=("O", "B-PER", "I-PER"))[0]["tags"] == [2, 0]
    csv_path = _write(tmp_path / "ner.csv", "tokens,ner_tags\nAnn lives,B-PER O\n")
    assert F.open_files(csv_path, ("tokens", "tags"), labels=tags)[0] == {"tokens": ["Ann", "lives"], "tags": [1, 2]}


def test_regression_labels_and_column_mapping(tmp_path):
    path = _write(tmp_path / "sts.csv", "a,b,score\nx,y,3.8\nz,w,1\n")
    assert F.derive_labels(path, columns={"label": "score"}) is None
    src = F.open_files(path, ("text", "text_pair", "label"), columns={"text": "a", "text_pair": "b", "label": "score"})
    assert src[0] == {"text": "x", "text_pair": "y", "label": 3.8} and src[1]["label"] == 1.0


def test_summaries_use_document_and_summary_columns(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"document": "long text", "summary": "short", "id": 7}])
    assert F.open_files(path, ("source", "target"), optional=("id",))[0] == {
        "source": "long text", "target": "short", "id": "7"}


def test_globs_and_several_files_concatenate(tmp_path):
    for k in range(3):
        _jsonl(tmp_path / f"part-{k}.jsonl", [{"text": f"{k}-{i}"} for i in range(k + 1)])
    src = F.open_files(str(tmp_path / "part-*.jsonl"), ("text",))
    assert [src[i]["text"] for i in range(len(src))] == ["0-0", "1-0", "1-1", "2-0", "2-1", "2-2"]
    assert src.where(3) == (str(tmp_path / "part-2.jsonl"), 1)
    with pytest.raises(ValueError, match="no file matches"):
        F.open_files(str(tmp_path / "nothing-*.jsonl"), ("text",))


# ---------------------------------------------------------------------------- named errors


def _error(tmp_path, name, content, roles=("text", "label"), **kw):
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError) as e:
        F.open_files(path, roles, **kw)
    msg = str(e.value)
    assert msg.startswith(path), msg
    return msg


@pytest.mark.parametrize("name,content", [("e.jsonl", ""), ("e.csv", "text,label\n"), ("e.txt", "\n\n"),
                                          ("e.json", "[]")])
def test_empty_file(tmp_path, name, content):
    assert "empty file" in _error(tmp_path, name, content, roles=("text",))


def test_missing_column_names_the_line_and_the_columns_found(tmp_path):
    msg = _error(tmp_path, "m.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', labels=("x",))
    assert "line 2" in msg and "missing column 'label'" in msg
    msg = _error(tmp_path, "m.csv", "sentence,stars\nhi,1\n", labels=("1",))
    assert "line 1" in msg and "role 'label'" in msg and "stars" in msg
    msg = _error(tmp_path, "m2.csv", "text,stars\nhi,1\n", columns={"label": "rating"}, labels=("1",))
    assert "missing column 'rating'" in msg


def test_label_not_in_the_label_set(tmp_path):
    msg = _error(tmp_path, "l.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": "neutral"}\n',
                 labels=("neg", "pos"))
    assert "line 2" in msg and "'neutral' is not in the label set (neg, pos)" in msg
    rows = [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["b", "c"], "tags": ["O", "B-XYZ"]}]
    msg = _error(tmp_path, "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows), roles=("tokens", "tags"),
                 labels=("O", "B-PER"))
    assert "line 2" in msg and "'B-XYZ'" in msg


def test_non_utf8_bytes(tmp_path):
    msg = _error(tmp_path, "u.jsonl", b'{"text": "ok", "label": 1}\n{"text": "caf\xe9", "label": 1}\n',
                 labels=("1",))
    assert "line 2" in msg and "not UTF-8" in msg and "byte 14" in msg  # 1-based: {"text": "caf = 13 bytes
    msg = _error(tmp_path, "u.json", b'[\n {"text": "ok"},\n {"text": "\xff"}\n]', roles=("text",))
    assert "line 3" in msg and "not UTF-8" in msg


def test_answer_not_at_its_start(tmp_path):
    good = {"id": "1", "question": "q", "context": "abc Paris", "answers": {"text": ["Paris"], "answer_start": [4]}}
    bad = dict(good, answers={"text": ["Paris"], "answer_start": [3]})
    msg = _error(tmp_path, "qa.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n",
                 roles=("question", "context", "answers"))
    assert "line 2" in msg and "'Paris' is not found at answer_start=3" in msg and "occurs at 4" in msg
    squad = {"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": [
        {"id": "a", "question": "q", "answers": [{"text": "abc", "answer_start": 0}]},
        {"id": "b", "question": "q", "answers": [{"text": "zz", "answer_start": 1}]}]}]}]}
    msg = _error(tmp_path, "squad.json", json.dumps(squad, indent=1), roles=("question", "context", "answers"))
    lines = [ln.strip() for ln in json.dumps(squad, indent=1).split("\n")]
    line = lines.index('"id": "b",')  # 0-based index of the id = 1-based number of the line above: the "{"
    assert lines[line - 1] == "{" and f"line {line}:" in msg and "'zz'" in msg


def test_malformed_json_and_rows(tmp_path):
    msg = _error(tmp_path, "j.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": }\n', labels=("1",))
    assert "line 2" in msg and "malformed JSON" in msg
    msg = _error(tmp_path, "j.json", '[{"text": "a"},\n {"text": }]', roles=("text",))
    assert "line 2" in msg and "malformed JSON" in msg
    msg = _error(tmp_path, "r.csv", "text,label\na,1\nb,1,extra\n", labels=("1",))
    assert "line 3" in msg and "3 fields" in msg
    msg = _error(tmp_path, "r.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', roles=("tokens", "tags"),
                 labels=("O",))
    assert "line 1" in msg and "2 tokens but 1 tags" in msg


def test_unknown_role_and_file_type(tmp_path):
    with pytest.raises(ValueError, match="unknown role 'sentence'"):
        F.open_files(_write(tmp_path / "a.txt", "x\n"), ("sentence",))
    with pytest.raises(ValueError, match="unknown file type '.parquet'"):
        F.open_files(_write(tmp_path / "a.parquet", "x"), ("text",))


# ---------------------------------------------------------------------------- grain


def _source(tmp_path, n=23):
    return F.open_files(_jsonl(tmp_path / "n.jsonl", [{"text": str(i)} for i in range(n)]), ("text",))


def _ids(ds):
    return [int(r["text"]) for r in ds]


def test_grain_epochs_are_reshuffled_permutations(tmp_path):
    src = _source(tmp_path)
    ids = _ids(F.grain_dataset(src, seed=3, num_epochs=2))
    assert len(ids) == 46 and sorted(ids[:23]) == sorted(ids[23:]) == list(range(23))
    assert ids[:23] != ids[23:] and ids[:23] != list(range(23))
    assert ids == _ids(F.grain_dataset(src, seed=3, num_epochs=2))  # seeded
    assert ids != _ids(F.grain_dataset(src, seed=4, num_epochs=2))
    assert _ids(F.grain_dataset(src, seed=0, shuffle=False)) == list(range(23))


def test_grain_shards_partition_the_records(tmp_path):
    src = _source(tmp_path)
    shards = [_ids(F.grain_dataset(src, seed=1, shard_index=k, shard_count=4)) for k in range(4)]
    assert sorted(sum(shards, [])) == list(range(23))
    even = [_ids(F.grain_dataset(src, seed=1, shard_index=k, shard_count=4, drop_remainder=True)) for k in range(4)]
    assert {len(s) for s in even} == {5}
    assert sorted(_ids(F.grain_dataset(src, seed=1, shard_index=1, shard_count=4))) == [1, 5, 9, 13, 17, 21]


def test_grain_iterator_resumes_exactly_from_its_state(tmp_path):
    src = _source(tmp_path)
    ds = F.grain_dataset(src, seed=7, num_epochs=3).to_iter_dataset()
    full = _ids(ds)
    it = iter(ds)
    head = [int(next(it)["text"]) for _ in range(30)]
    state = json.loads(json.dumps(it.get_state()))
    fresh = iter(F.grain_dataset(pickle.loads(pickle.dumps(src)), seed=7, num_epochs=3).to_iter_dataset())
    fresh.set_state(state)
    assert head + _ids(fresh) == full


def test_source_is_picklable_and_random_access_matches_a_full_read(tmp_path):
    rows = [{"text": f"row {i} " + "x" * (i % 5), "label": i % 2} for i in range(50)]
    path = _jsonl(tmp_path / "r.jsonl", rows)
    src = pickle.loads(pickle.dumps(F.open_files(path, ("text", "label"), labels=("0", "1"))))
    import grain

    assert isinstance(src, grain.sources.RandomAccessDataSource)
    order = np.random.default_rng(0).permutation(50)
    assert [src[int(i)]["text"] for i in order] == [rows[i]["text"] for i in order]
