"""RoBERTa (Liu et al. 2019) and XLM-RoBERTa (Conneau et al. 2020): BERT's layers and names under
`roberta.`, one token type, and learned positions that start after the padding id (row pad_id + 1
is position 0, `position_offset`).

The sequence classifier's head (`classifier.dense`, tanh, `classifier.out_proj`) is our pooler and
classifier; the bare model's `pooler.dense` is the pooler of the `encoder` head.
"""

from __future__ import annotations

import dataclasses

from transformer_jax.config import TransformerConfig
from transformer_jax.model import Encoder
from transformer_jax.pretrained.families import bert
from transformer_jax.pretrained.families.base import (Family, encoder_head_rows, encoder_paths, linear_rows,
                                                      norm_rows)
from transformer_jax.pretrained.tensors import Tensor, copy


def _architectures(prefix: str) -> dict[str, str]:
    return {f"{prefix}Model": "encoder", f"{prefix}ForMaskedLM": "masked_lm",
            f"{prefix}ForSequenceClassification": "sequence_classification",
            f"{prefix}ForTokenClassification": "token_classification",
            f"{prefix}ForQuestionAnswering": "question_answering"}


HEADS = {**_architectures("Roberta"), **_architectures("XLMRoberta")}


def to_config(hf: dict) -> TransformerConfig:
    pad = hf.get("pad_token_id", 1)
    hf = dict(hf, pad_token_id=pad, max_position_embeddings=hf["max_position_embeddings"] - pad - 1,
              type_vocab_size=hf.get("type_vocab_size", 1))
    return bert.to_config(hf).replace(position_offset=pad + 1, norm_eps=hf.get("layer_norm_eps", 1e-5))


def _to_hf(cfg: TransformerConfig, model_type: str) -> dict:
    hf = bert.to_hf(cfg)
    return dict(hf, model_type=model_type, max_position_embeddings=cfg.max_len + cfg.position_offset)


def tensors(cfg: TransformerConfig, arch: str) -> list[Tensor]:
    head = HEADS[arch]
    enc, emb = encoder_paths(head)
    rows = bert.backbone(cfg, "" if head == "encoder" else "roberta.", enc, emb)
    if head == "masked_lm":
        return rows + [*linear_rows("lm_head.dense", ("transform",)),
                       *norm_rows("lm_head.layer_norm", ("transform_norm",)),
                       copy("lm_head.bias", ("logits_bias",), aliases=("lm_head.decoder.bias",))]
    return rows + encoder_head_rows(head, pooler="pooler.dense", classifier="classifier",
                                    seq_pooler="classifier.dense", seq_classifier="classifier.out_proj")


_IGNORED = (r"lm_head\.decoder\.weight", r".*position_ids")
ROBERTA = Family("roberta", _architectures("Roberta"), to_config, lambda cfg: _to_hf(cfg, "roberta"), tensors,
                 ignored=_IGNORED, base_prefix="roberta", build={"encoder": lambda cfg: Encoder(cfg, pooler=True)})
XLM_ROBERTA = dataclasses.replace(ROBERTA, name="xlm-roberta", architectures=_architectures("XLMRoberta"),
                                  to_hf=lambda cfg: _to_hf(cfg, "xlm-roberta"))
