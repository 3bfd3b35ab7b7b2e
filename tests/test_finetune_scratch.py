"""Every fine-tuning config also trains from scratch, without `init_from`: a small model
(`scratch_model`) and a built-in tokenizer (SentencePiece trained on the train files, or bytes) framed
as a checkpoint's (data/framed.py), on the built-in task data -> eval.json with the task's metrics ->
predict. Tiny sizes, two steps: these check that each pipeline runs and scores, not what it learns
(benchmarks/finetune.py measures that)."""

import json
import os

import pytest

from transformer_jax import cli
from transformer_jax.data.builtin_files import builtin_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--config.scratch_model.d_model=32", "--config.scratch_model.num_heads=2", "--config.scratch_model.d_ff=64",
        "--config.scratch_model.num_encoder_layers=1", "--config.scratch_model.num_decoder_layers=1",
        "--config.data.vocab_size=300", "--config.num_epochs=1", "--config.optimizer.learning_rate=1e-3")
CASES = {  # name: (config, built-in dataset, flags, eval.json metrics, a key of every predict line)
    "pairs": ("finetune_classification.py", "tjax_pairs", ("--config.data.max_src_len=48",), {"accuracy", "f1"},
              "label"),
    "ner_bytes": ("finetune_ner.py", "tjax_entities", ("--config.data.tokenizer=byte", "--config.data.max_src_len=96"),
                  {"precision", "recall", "f1"}, "entities"),
    "qa": ("finetune_qa.py", "tjax_questions", ("--config.data.max_src_len=48", "--config.data.doc_stride=16"),
           {"exact_match", "f1"}, "answer"),
    "seq2seq": ("finetune_seq2seq.py", "tjax_summaries", ("--config.data.max_src_len=96", "--config.data.max_tgt_len=24",
                                                          "--config.decode.max_len=6"),
                {"rouge1", "rouge2", "rougeL", "bleu"}, "generated"),
    "lm_prompt_response": ("finetune_lm.py", "tjax_summaries", (
        "--config.data.columns.prompt=document", "--config.data.columns.response=summary",
        "--config.data.max_tgt_len=96", "--config.decode.max_len=4"), {"perplexity"}, "generated"),
}


def _files(tmp_path, dataset: str) -> dict[str, str]:
    """The first records of each split of the built-in dataset's tiny config, as JSONL files."""
    out = {}
    for split, n in (("train", 32), ("validation", 8), ("test", 8)):
        out[split] = str(tmp_path / f"{split}.jsonl")
        with open(out[split], "w") as f:
            for r in builtin_records(f"{dataset}/tiny", split)[:n]:
                f.write(json.dumps(r) + "\n")
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_a_fine_tuning_config_trains_from_scratch_with_a_built_in_tokenizer(tmp_path, name):
    config, dataset, flags, metrics, key = CASES[name]
    files, work = _files(tmp_path, dataset), str(tmp_path / "run")
    assert cli.main(["train", "--config", os.path.join(ROOT, "configs", config), "--workdir", work, *TINY, *flags,
                     f"--config.data.train_files={files['train']}", f"--config.data.validation_files={files['validation']}",
                     f"--config.data.test_files={files['test']}"]) == 0
    test = json.load(open(os.path.join(work, "eval.json")))
    assert metrics <= set(test), test
    out = str(tmp_path / "predictions.jsonl")
    assert cli.main(["predict", "--workdir", work, "--input", files["test"], "--output", out]) == 0
    lines = [json.loads(x) for x in open(out)]
    records = [json.loads(x) for x in open(files["test"])]
    assert len(lines) == 8 and all(key in line for line in lines)
    if name == "qa":  # spans of the context, by the built-in tokenizer's offsets
        assert all(r["context"][x["start"]:x["end"]] == x["answer"] for r, x in zip(records, lines))
    if name == "ner_bytes":
        assert [line["tokens"] for line in lines] == [r["tokens"] for r in records]
