"""Sequence to sequence (Vaswani et al. 2017): translation and summarization with an encoder-decoder
`Transformer`; BLEU of beam-search outputs at the end.

Batch: src, src_segment_ids, src_positions [B, S]; tgt_in, tgt_out, tgt_segment_ids, tgt_positions
[B, T] (int32; src = tokens + EOS; tgt_in = BOS + tokens; tgt_out = tokens + EOS).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import jax
import numpy as np

from transformer_jax import sharding as shd
from transformer_jax.config import BOS_ID, EOS_ID
from transformer_jax.data.metrics import corpus_bleu
from transformer_jax.tasks.base import Field, Task, token_weights
from transformer_jax.tasks.predictor import Predictor, model_params


def _i32(ids) -> np.ndarray:
    return np.asarray(ids, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Translation(Task):
    """Source text -> target text; `source`/`target` name the record's features."""

    source: str = "source"
    target: str = "target"
    name: ClassVar[str] = "translation"
    model_type: ClassVar[str] = "transformer"
    fields: ClassVar[tuple[Field, ...]] = (Field("src", "src", segments="src_"),
                                           Field("tgt_in", "tgt", segments="tgt_"),
                                           Field("tgt_out", "tgt", role="target"))

    def featurize(self, record, fz) -> dict | None:
        src = fz.ids(fz.text(record, self.source), fz.max_src_len - 1)
        tgt = None if src is None else fz.ids(fz.text(record, self.target), fz.max_tgt_len - 1)
        if tgt is None:
            return None
        return {"src": _i32(src + [EOS_ID]), "tgt_in": _i32([BOS_ID] + tgt), "tgt_out": _i32(tgt + [EOS_ID])}

    def targets_and_weights(self, batch):
        targets = batch["tgt_out"]
        return targets, batch.get("tgt_weights", token_weights(targets))

    def text_features(self) -> tuple[str, ...]:
        return (self.source, self.target)

    def evaluate(self, predictor: Predictor, records, settings) -> dict[str, Any]:
        """Corpus BLEU (sacrebleu) of beam-search outputs for `records` (dicts with the source and
        target features). `settings`: beam_size, max_len, length_penalty, batch_size, max_src_len."""
        sources = [_text(r[self.source]) for r in records]
        references = [_text(r[self.target]) for r in records]
        t0 = time.time()
        hyps = translate(predictor, sources, beam_size=settings.beam_size,
                         max_len=min(settings.max_len, predictor.model.cfg.max_len),
                         length_penalty=settings.length_penalty, batch_size=settings.batch_size,
                         src_len=settings.max_src_len)
        bleu, signature = corpus_bleu(hyps, references)
        return {"bleu": bleu, "signature": signature, "examples": len(sources), "beam_size": settings.beam_size,
                "seconds": time.time() - t0,
                "samples": [{"source": a, "reference": b, "hypothesis": c}
                            for a, b, c in list(zip(sources, references, hyps))[:5]]}


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def translate(p: Predictor, sources: list[str], *, beam_size: int, max_len: int, length_penalty: float,
              batch_size: int, src_len: int) -> list[str]:
    """Beam-search outputs for `sources` (strings) with `transformer_jax.generate`."""
    from transformer_jax.decode import generate

    params, replicated = p.replicated()
    gen = jax.jit(lambda q, src: generate(p.model, {"params": model_params(q)}, src, max_len=max_len,
                                          beam_size=beam_size, length_penalty=length_penalty))
    outputs = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        src = np.zeros((batch_size, src_len), np.int32)  # [B, S]
        for r, text in enumerate(chunk):
            ids = list(p.tokenizer.encode(text))[: src_len - 1] + [EOS_ID]
            src[r, : len(ids)] = ids
        with shd.activate(p.mesh):
            out = np.asarray(jax.device_get(gen(params, jax.device_put(src, replicated))))
        outputs += [p.tokenizer.decode(row.tolist()) for row in out[: len(chunk)]]
    return outputs


@dataclasses.dataclass(frozen=True)
class Seq2Seq(Task):
    """Summarization or translation fine-tuned from a pretrained encoder-decoder (T5, BART, Marian),
    with the checkpoint's tokenizer and its generation settings (`generation`, a GenerationConfig:
    decoder start, EOS, pad). `prefix` goes before every source (T5's "summarize: ").

    Batch: src, src_segment_ids, src_positions [B, S]; tgt_in, tgt_out, tgt_segment_ids,
    tgt_positions [B, T] int32 (tgt_out = the target's tokens with the tokenizer's EOS; tgt_in =
    decoder start + tgt_out[:-1]); tgt_weights [B, T] float32. Records: {"source", "target": str}.
    Scores: ROUGE-1/2/L (rouge-score, F-measure x 100) and BLEU (sacrebleu) of beam-search outputs.
    """

    prefix: str = ""
    generation: Any = None
    max_new_tokens: int = 64
    name: ClassVar[str] = "seq2seq"
    model_type: ClassVar[str] = "transformer"
    head: ClassVar[str] = "seq2seq"
    roles: ClassVar[tuple[str, ...]] = ("source", "target")
    optional_roles: ClassVar[tuple[str, ...]] = ()
    predict_roles: ClassVar[tuple[str, ...]] = ("source",)
    predict_optional: ClassVar[tuple[str, ...]] = ()
    label_role: ClassVar[str | None] = None
    labels: ClassVar[None] = None
    fields: ClassVar[tuple[Field, ...]] = (Field("src", "src", segments="src_"), Field("tgt_in", "tgt", segments="tgt_"),
                                           Field("tgt_out", "tgt", role="target"),
                                           Field("tgt_weights", "tgt", np.float32, role="target"))
    packable: ClassVar[bool] = False
    framing: ClassVar[str] = "seq2seq"

    def featurize(self, record, fz) -> dict | None:
        src = list(fz.tokenizer([self.prefix + record["source"]], truncation=True, max_length=fz.max_src_len)
                   ["input_ids"][0])  # a batch of one
        tgt = list(fz.tokenizer([record.get("target") or ""], truncation=True, max_length=fz.max_tgt_len)
                   ["input_ids"][0])
        start = self.generation.decoder_start_id if self.generation is not None else 0
        return {"src": _i32(src), "tgt_in": _i32([start, *tgt[:-1]]), "tgt_out": _i32(tgt),
                "tgt_weights": np.ones(len(tgt), np.float32)}

    def targets_and_weights(self, batch):
        return batch["tgt_out"], batch["tgt_weights"]

    def text_features(self) -> tuple[str, ...]:
        return ("source", "target")

    def generate(self, predictor: Predictor, records, settings) -> list[str]:
        from transformer_jax.pretrained.text import generate_text

        return generate_text(predictor.model, {"params": model_params(predictor.params)}, predictor.tokenizer,
                             [self.prefix + r["source"] for r in records], generation_config=self.generation,
                             max_new_tokens=self.max_new_tokens, beam_size=settings.beam_size,
                             batch_size=settings.batch_size)

    def evaluate(self, predictor: Predictor, records, settings) -> dict[str, Any]:
        from transformer_jax.data import metrics

        hyps = self.generate(predictor, records, settings)
        refs = [r["target"] for r in records]
        bleu, signature = corpus_bleu(hyps, refs)
        return {"examples": len(records), **metrics.rouge(hyps, refs), "bleu": bleu, "bleu_signature": signature,
                "samples": [{"source": r["source"], "reference": r["target"], "hypothesis": h}
                            for r, h in list(zip(records, hyps))[:5]]}

    def predict(self, predictor: Predictor, records, settings) -> list[dict]:
        return [{"generated": h} for h in self.generate(predictor, records, settings)]
