"""`GenerationConfig`: the special tokens and lengths of generation, read from Hugging Face's
`generation_config.json` where a checkpoint has one."""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any

from transformer_jax.config import BOS_ID, EOS_ID, PAD_ID

# ---- configuration -------------------------------------------------------------------------------

# Hugging Face generation fields this module does not honour, with HF's defaults: a JSON that sets
# one to another value asks for behaviour we would silently drop, so from_dict warns.
_HF_UNHONOURED = {
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "temperature": 1.0, "top_k": 50,
    "top_p": 1.0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "length_penalty": 1.0, "early_stopping": False, "min_length": 0, "min_new_tokens": None,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None,
    "constraints": None, "diversity_penalty": 0.0, "penalty_alpha": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_decoder_ids": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "remove_invalid_values": False, "num_return_sequences": 1, "guidance_scale": None,
    "max_time": None, "stop_strings": None, "watermarking_config": None, "dola_layers": None,
    "token_healing": False,
}
# Fields that change nothing about the tokens (outputs, caching, bookkeeping): ignored silently.
_HF_COSMETIC = ("transformers_version", "output_attentions", "output_hidden_states", "output_scores",
                "output_logits", "return_dict_in_generate", "use_cache", "cache_implementation",
                "cache_config", "return_legacy_cache", "low_memory", "is_assistant",
                "num_assistant_tokens", "num_assistant_tokens_schedule",
                "assistant_confidence_threshold", "prompt_lookup_num_tokens",
                "max_matching_ngram_size", "generation_kwargs")


def _ids(value) -> tuple[int, ...]:
    """An id or a list of ids (HF allows both) -> a tuple of ints."""
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Special tokens and lengths of generation (the fields of HF's `GenerationConfig` we honour).

    decoder_start_id: first decoder input of an encoder-decoder (HF `decoder_start_token_id`).
    eos_ids: any of these ends a row (HF `eos_token_id`, an int or a list); () never ends early.
    pad_id: emitted after a row has ended.
    forced_bos_id: forced at the first generated position (HF `forced_bos_token_id`; HF applies it
      only when the input is one token long, so for decoder-only prompts longer than one token HF
      ignores it and we do not).
    forced_eos_id: forced at the last position, when the length runs out (HF
      `forced_eos_token_id`; a tuple makes all of them allowed, scored equally, as in HF).
    max_new_tokens, max_length: HF semantics; max_length counts the prompt (decoder-only) or the
      start token (encoder-decoder). Arguments to `generate` override both.
    """

    decoder_start_id: int = BOS_ID
    eos_ids: tuple[int, ...] = (EOS_ID,)
    pad_id: int = PAD_ID
    forced_bos_id: int | None = None
    forced_eos_id: int | tuple[int, ...] | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "eos_ids", _ids(self.eos_ids))
        if isinstance(self.forced_eos_id, list):
            object.__setattr__(self, "forced_eos_id", tuple(self.forced_eos_id))
        for name in ("max_new_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"GenerationConfig.{name} must be a positive int or None; got {value!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        """Read the fields of a Hugging Face generation config; warn about set fields we ignore."""
        given = {k: v for k, v in d.items() if v is not None}
        kw: dict[str, Any] = {}
        start = given.get("decoder_start_token_id", given.get("bos_token_id"))
        if start is not None:
            kw["decoder_start_id"] = int(start)
        if "eos_token_id" in given:
            kw["eos_ids"] = _ids(given["eos_token_id"])
        if "pad_token_id" in given:
            kw["pad_id"] = int(given["pad_token_id"])
        elif kw.get("eos_ids"):  # HF pads with the (first) EOS when the model has no pad token
            kw["pad_id"] = kw["eos_ids"][0]
        if "forced_bos_token_id" in given:
            kw["forced_bos_id"] = int(given["forced_bos_token_id"])
        if "forced_eos_token_id" in given:
            ids = _ids(given["forced_eos_token_id"])
            kw["forced_eos_id"] = ids[0] if len(ids) == 1 else ids
        for key in ("max_new_tokens", "max_length"):
            if key in given:
                kw[key] = int(given[key])
        honoured = {"decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
                    "forced_bos_token_id", "forced_eos_token_id", "max_new_tokens", "max_length"}
        ignored = sorted(k for k, v in d.items()
                         if k not in honoured and k not in _HF_COSMETIC and not k.startswith("_")
                         and v != _HF_UNHONOURED.get(k))
        if ignored:
            warnings.warn("GenerationConfig: ignoring generation settings transformer_jax does not "
                          f"honour: {', '.join(f'{k}={d[k]!r}' for k in ignored)} (sampling and beam "
                          "settings are arguments of generate)", UserWarning, stacklevel=2)
        return cls(**kw)

    @classmethod
    def from_json(cls, path) -> "GenerationConfig":
        """Read a Hugging Face `generation_config.json`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))
