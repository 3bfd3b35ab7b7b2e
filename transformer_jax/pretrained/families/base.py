"""What a family is, and the helpers its config mapping and tensor table are written with.

A `Family` holds a published architecture as values: its `config.json` fields both ways
(`to_config`, `to_hf`), its tensor table per architecture (`tensors`), and which of our heads each
Hugging Face architecture name is (`architectures`). Every architecture feature is an ordinary
`TransformerConfig` option; nothing here forks the model code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from transformer_jax.config import TransformerConfig
from transformer_jax.model import (DecoderLM, Encoder, EncoderClassifier, MaskedLM, QuestionAnswering,
                                   TokenClassifier, Transformer)
from transformer_jax.pretrained.tensors import Tensor, bias_heads, copy, heads_in, heads_out, linear

# head name -> the model class that implements it (a family may build its own, see `Family.build`).
HEADS = {
    "encoder": Encoder,
    "masked_lm": MaskedLM,
    "causal_lm": DecoderLM,
    "seq2seq": Transformer,
    "sequence_classification": EncoderClassifier,
    "token_classification": TokenClassifier,
    "question_answering": QuestionAnswering,
}
ENCODER_HEADS = ("encoder", "masked_lm", "sequence_classification", "token_classification", "question_answering")

# Hugging Face activation names -> ours (gated variants are chosen by the family).
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
OUR_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


@dataclasses.dataclass(frozen=True)
class Family:
    """One published architecture family.

    - `architectures`: Hugging Face class name -> our head name (a key of `HEADS`), e.g.
      `{"BertModel": "encoder", "BertForSequenceClassification": "sequence_classification"}`.
    - `to_config(hf) -> config` and `to_hf(config) -> dict` (the config.json fields, without
      `architectures`).
    - `tensors(config, architecture) -> [Tensor]`: every parameter of that architecture's model.
    - `ignored`: regexes of stored tensors that carry nothing we use (buffers, tied copies).
    - `unused`: regexes of stored weights no head of ours holds (pretraining heads such as BERT's
      next-sentence classifier): dropped on loading, and reported.
    - `base_prefix`: the reference's `base_model_prefix` ("bert"): the backbone's tensors carry it
      in every architecture but the bare model, so a checkpoint of one head loads under another.
    - `build`: head -> a function of the config building the model, where `HEADS` does not fit.
    - `resolve(hf, reader) -> hf`: config.json corrected by what the checkpoint stores, where the
      reference decides from the tensors (T5: an `lm_head.weight` unlike `shared.weight` is untied
      whatever `tie_word_embeddings` says).
    - `model_fields(model) -> dict`: config.json fields a model holds beside its config (ViT's
      image geometry), written when saving.
    """

    name: str
    architectures: dict[str, str]
    to_config: Callable[[dict], TransformerConfig]
    to_hf: Callable[[TransformerConfig], dict]
    tensors: Callable[[TransformerConfig, str], list[Tensor]]
    ignored: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    base_prefix: str = ""
    build: dict = dataclasses.field(default_factory=dict)
    resolve: Callable | None = None
    model_fields: Callable[[object], dict] = lambda model: {}

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.architectures.values()))

    def architecture(self, head: str) -> str:
        """The Hugging Face class name of `head` in this family; raises naming the valid heads."""
        for arch, h in self.architectures.items():
            if h == head:
                return arch
        raise ValueError(f"head={head!r} is not available for the {self.name} family; "
                         f"valid: {', '.join(self.heads)}")

    def model(self, head: str, cfg):
        """The Flax module of `head` built from `cfg`."""
        self.architecture(head)  # validates
        return self.build[head](cfg) if head in self.build else HEADS[head](cfg)

    def canonical(self, name: str) -> str:
        """A tensor name without the backbone prefix, the same under every head."""
        prefix = self.base_prefix + "."
        return name[len(prefix):] if self.base_prefix and name.startswith(prefix) else name


# ---- config.json helpers -------------------------------------------------------------------------

def unsupported(field: str, value, valid: str) -> ValueError:
    return ValueError(f"config.json: {field}={value!r} is not supported; {valid}")


def require(hf: dict, field: str, allowed: tuple, default=None):
    """hf[field] (or `default`), which must be one of `allowed`."""
    value = hf.get(field, default)
    if value not in allowed:
        raise unsupported(field, value, f"supported: {', '.join(map(repr, allowed))}")
    return value


def activation(hf: dict, field: str, default: str = "gelu") -> str:
    name = hf.get(field, default)
    if name not in HF_ACTIVATIONS:
        raise unsupported(field, name, f"supported: {', '.join(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def our_activation(cfg: TransformerConfig) -> str:
    return OUR_ACTIVATIONS.get(cfg.activation, cfg.activation)


def num_labels(hf: dict) -> int:
    return int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)


# ---- tensor-table helpers ------------------------------------------------------------------------

def attn_rows(prefix: str, path: tuple, cfg: TransformerConfig, names=("q", "k", "v", "o"), bias=True):
    """Separate q/k/v/out nn.Linear projections (all families but GPT-2)."""
    n, kv, h = cfg.num_heads, cfg.resolved_kv_heads, cfg.resolved_head_dim
    rows = [heads_in(f"{prefix}.{names[0]}.weight", path + ("query", "kernel"), n, h),
            heads_in(f"{prefix}.{names[1]}.weight", path + ("key", "kernel"), kv, h),
            heads_in(f"{prefix}.{names[2]}.weight", path + ("value", "kernel"), kv, h),
            heads_out(f"{prefix}.{names[3]}.weight", path + ("out", "kernel"), n, h)]
    if bias:
        rows += [bias_heads(f"{prefix}.{names[0]}.bias", path + ("query", "bias"), n, h),
                 bias_heads(f"{prefix}.{names[1]}.bias", path + ("key", "bias"), kv, h),
                 bias_heads(f"{prefix}.{names[2]}.bias", path + ("value", "bias"), kv, h),
                 copy(f"{prefix}.{names[3]}.bias", path + ("out", "bias"))]
    return rows


def linear_rows(name: str, path: tuple, bias=True):
    """An nn.Linear `name` (weight [out, in], bias) <-> a Dense at `path`."""
    rows = [linear(f"{name}.weight", path + ("kernel",))]
    return rows + [copy(f"{name}.bias", path + ("bias",))] if bias else rows


def norm_rows(name: str, path: tuple, bias=True):
    rows = [copy(f"{name}.weight", path + ("scale",))]
    return rows + [copy(f"{name}.bias", path + ("bias",))] if bias else rows


def encoder_paths(head: str) -> tuple[tuple, tuple]:
    """Where the encoder stack and its token embedding table live in the model of an encoder head:
    (stack path, embedding path). The bare `Encoder` holds its layers itself; `MaskedLM` keeps the
    embedding at the top, shared with its output logits."""
    if head == "encoder":
        return (), ("embedding",)
    if head == "masked_lm":
        return ("encoder",), ("embedding",)
    return ("encoder",), ("encoder", "embedding")


def encoder_head_rows(head: str, *, pooler: str | None, classifier: str, qa: str = "qa_outputs",
                      seq_classifier: str | None = None, seq_pooler: str | None = None) -> list:
    """The head tensors of the non-MLM encoder heads.

    `pooler`: the bare model's pooler (None: the family has none); `classifier`: the token
    classifier; `seq_pooler`/`seq_classifier`: the sequence classifier's pooler dense and output
    (default `pooler` and `classifier`); `qa`: the span head.
    """
    if head == "encoder":
        return linear_rows(pooler, ("pooler",)) if pooler else []
    if head == "sequence_classification":
        return [*linear_rows(seq_pooler or pooler, ("pooler",)),
                *linear_rows(seq_classifier or classifier, ("classifier",))]
    if head == "token_classification":
        return linear_rows(classifier, ("classifier",))
    if head == "question_answering":
        return linear_rows(qa, ("qa_outputs",))
    return []
