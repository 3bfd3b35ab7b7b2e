"""Language models: next-token prediction (a `DecoderLM`) and masked-token prediction (BERT's
`MaskedLM`); the loss evaluation (perplexity, masked-token accuracy) is their metric.

CausalLM batch: inputs, targets, segment_ids, positions [B, T] (inputs = BOS + tokens;
targets = tokens + EOS). MaskedLM batch: the same names at [B, S] (inputs = the corrupted tokens
+ EOS; targets = the original token at the selected positions, 0 (no loss) elsewhere).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import numpy as np

from transformer_jax import sharding as shd
from transformer_jax.config import BOS_ID, EOS_ID
from transformer_jax.tasks.base import Field, Task, token_weights
from transformer_jax.tasks.predictor import Predictor, model_params


def _i32(ids) -> np.ndarray:
    return np.asarray(ids, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class CausalLM(Task):
    """Next-token prediction on (packed) text; `text` names the record's feature."""

    text: str = "text"
    name: ClassVar[str] = "causal LM"
    model_type: ClassVar[str] = "decoder_lm"
    fields: ClassVar[tuple[Field, ...]] = (Field("inputs", "tgt", segments=""), Field("targets", "tgt", role="target"))

    def featurize(self, record, fz) -> dict | None:
        ids = fz.ids(fz.text(record, self.text), fz.max_tgt_len - 1)
        return None if ids is None else {"inputs": _i32([BOS_ID] + ids), "targets": _i32(ids + [EOS_ID])}

    def targets_and_weights(self, batch):
        targets = batch["targets"]
        return targets, batch.get("weights", token_weights(targets))

    def text_features(self) -> tuple[str, ...]:
        return (self.text,)


@dataclasses.dataclass(frozen=True)
class MaskTokens:
    """BERT's corruption (Devlin et al. 2019, §3.1): select `rate` of the non-special tokens; of
    those 80% become [MASK], 10% a random token, 10% stay; the loss sees only the selected ones.

    A Grain RandomMap: the generator is derived from (seed, example index), so the masks are the
    same on every run and after a resume, and differ from epoch to epoch (RoBERTa's dynamic masking).
    """

    mask_id: int
    vocab_size: int
    rate: float = 0.15
    first_token: int = 4  # ids below are pad, EOS, BOS, UNK: never selected nor drawn

    def random_map(self, ex, rng: np.random.Generator):
        if ex is None:
            return None
        tokens = ex["inputs"]
        candidates = tokens >= self.first_token
        selected = candidates & (rng.random(tokens.shape) < self.rate)
        if candidates.any() and not selected.any():  # at least one target per example
            selected[rng.choice(np.flatnonzero(candidates))] = True
        action = rng.random(tokens.shape)
        random_tokens = rng.integers(self.first_token, self.vocab_size, tokens.shape)
        inputs = np.where(selected & (action < 0.8), self.mask_id, tokens)
        inputs = np.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
        return {"inputs": inputs.astype(np.int32), "targets": np.where(selected, tokens, 0).astype(np.int32)}

    __call__ = random_map


@dataclasses.dataclass(frozen=True)
class MaskedLM(CausalLM):
    """Masked-token prediction (BERT): reads S = `max_src_len` tokens per row (an encoder input);
    packs like the causal LM."""

    text: str = "text"
    mask_rate: float = 0.15
    name: ClassVar[str] = "masked LM"
    model_type: ClassVar[str] = "masked_lm"
    symbols: ClassVar[tuple[str, ...]] = ("[MASK]",)
    fields: ClassVar[tuple[Field, ...]] = (Field("inputs", "src", segments=""), Field("targets", "src", role="target"))

    def __post_init__(self):
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"MaskedLM.mask_rate={self.mask_rate!r} must be in (0, 1)")

    def featurize(self, record, fz) -> dict | None:
        ids = fz.ids(fz.text(record, self.text), fz.max_src_len - 1)
        return None if ids is None else {"inputs": _i32(ids + [EOS_ID])}

    def augment(self, tokenizer) -> MaskTokens:
        mask_id = getattr(tokenizer, "mask_id", None)
        if mask_id is None:
            raise ValueError(f"a masked-LM task needs a tokenizer with a [MASK] piece; {type(tokenizer).__name__} "
                             "has none (use config.data.tokenizer='sentencepiece', which adds one)")
        return MaskTokens(mask_id, tokenizer.vocab_size, self.mask_rate)


def continue_text(p: Predictor, prompts: list[str], *, max_new_tokens: int, beam_size: int = 1,
                  batch_size: int = 16) -> list[str]:
    """Continuations of `prompts` (strings) by a causal LM, with `transformer_jax.generate` (greedy,
    or beam search); each prompt starts with BOS, as the training rows do."""
    from transformer_jax.decode import generate

    encoded = [[BOS_ID] + list(p.tokenizer.encode(text)) for text in prompts]
    width = max(len(e) for e in encoded) if encoded else 1
    room = p.model.cfg.max_len + 1 - max_new_tokens
    if width > room:
        raise ValueError(f"a prompt of {width} tokens plus --max_new_tokens={max_new_tokens} exceeds the model's "
                         f"max_len={p.model.cfg.max_len}; shorten the prompt or ask for fewer tokens")
    params, replicated = p.replicated()
    gen = jax.jit(lambda q, x, n: generate(p.model, {"params": model_params(q)}, x, max_new_tokens=max_new_tokens,
                                           beam_size=beam_size, prompt_lengths=n))
    outputs = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        tokens = np.zeros((batch_size, width), np.int32)  # [B, T]
        lengths = np.ones((batch_size,), np.int32)
        for r, ids in enumerate(chunk):
            tokens[r, : len(ids)], lengths[r] = ids, len(ids)
        with shd.activate(p.mesh):
            out = np.asarray(jax.device_get(gen(params, jax.device_put(tokens, replicated),
                                                jax.device_put(lengths, replicated))))
        for row, n in zip(out[: len(chunk)], lengths):
            outputs.append(p.tokenizer.decode(row[n:].tolist()))
    return outputs


@dataclasses.dataclass(frozen=True)
class CausalLMFinetune(Task):
    """Fine-tuning a pretrained decoder (GPT-2, Llama, Qwen3, Gemma 3) with its own tokenizer on text
    records, or on prompt/response records with the loss on the response only (its tokens and the
    EOS that ends it). `generation`: the checkpoint's GenerationConfig (EOS, pad) for `predict`.

    Batch: inputs, targets, segment_ids, positions [B, T] int32 (targets = inputs shifted by one);
    weights [B, T] float32 (0 on the prompt and on padding). Records: {"text"} or {"prompt", "response"}.
    Its metric is the loss evaluation (perplexity of the targets).
    """

    generation: Any = None
    max_new_tokens: int = 32
    name: ClassVar[str] = "causal LM fine-tuning"
    model_type: ClassVar[str] = "decoder_lm"
    head: ClassVar[str] = "causal_lm"
    roles: ClassVar[tuple[str, ...]] = ()
    optional_roles: ClassVar[tuple[str, ...]] = ("text", "prompt", "response")
    predict_roles: ClassVar[tuple[str, ...]] = ()
    predict_optional: ClassVar[tuple[str, ...]] = ("text", "prompt")
    label_role: ClassVar[str | None] = None
    labels: ClassVar[None] = None
    packable: ClassVar[bool] = False
    framing: ClassVar[str] = "decoder"
    fields: ClassVar[tuple[Field, ...]] = (Field("inputs", "tgt", segments=""), Field("targets", "tgt", role="target"),
                                           Field("weights", "tgt", np.float32, role="target"))

    def _eos(self) -> list[int]:
        ids = self.generation.eos_ids if self.generation is not None else ()
        return [int(ids[0])] if ids else []

    def featurize(self, record, fz) -> dict | None:
        tok = fz.tokenizer
        if record.get("prompt") is not None:  # the response continues the prompt: no special tokens of its own
            prompt = list(tok.encode(record["prompt"]))
            response = list(tok(record.get("response") or "", add_special_tokens=False)["input_ids"][0]) + self._eos()
        else:
            prompt, response = [], list(tok.encode(record.get("text") or "")) + self._eos()
        seq = (prompt + response)[: fz.max_tgt_len + 1]
        if len(seq) < 2:
            return None
        weights = np.asarray([0.0] * len(prompt) + [1.0] * len(response), np.float32)[1:len(seq)]
        return {"inputs": _i32(seq[:-1]), "targets": _i32(seq[1:]), "weights": weights}

    def targets_and_weights(self, batch):
        return batch["targets"], batch["weights"]

    def text_features(self) -> tuple[str, ...]:
        return ("text", "prompt", "response")

    def predict(self, predictor: Predictor, records, settings) -> list[dict]:
        """The continuation of each record's prompt (or text)."""
        from transformer_jax.pretrained.text import generate_text

        prompts = [r.get("prompt") if r.get("prompt") is not None else r.get("text", "") for r in records]
        outs = generate_text(predictor.model, {"params": model_params(predictor.params)}, predictor.tokenizer, prompts,
                             generation_config=self.generation, max_new_tokens=self.max_new_tokens,
                             beam_size=settings.beam_size, batch_size=settings.batch_size)
        return [{"generated": o} for o in outs]
