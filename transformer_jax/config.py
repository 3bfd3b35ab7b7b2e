"""Model configuration: one frozen dataclass, validated on construction, and preset functions.

Only the top-level models read a `TransformerConfig`; layers receive the scalars they use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from transformer_jax.attention import Dense

ACTIVATIONS = ("relu", "gelu", "swiglu", "geglu")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
POSITIONS = ("sinusoidal", "learned", "rotary", "none")
DTYPES = ("float32", "bfloat16", "float16")

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of every model in the library (encoder-decoder, encoder-only, decoder-only).

    Attention fields take an attention spec (e.g. `Dense()`, `Windowed(128)`) for every layer, or a
    tuple with one spec per layer. Token id 0 is padding, 1 EOS, 2 BOS.
    """

    vocab_size: int = 32_000
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int | None = None  # default d_model // num_heads
    dropout_rate: float = 0.1
    activation: str = "relu"
    norm: str = "layernorm"
    norm_position: str = "post"  # Vaswani et al. 2017 is post-LN
    position: str = "sinusoidal"
    max_len: int = 512  # longest position for learned embeddings and decoding caches
    share_embeddings: bool = True  # one table for encoder input and decoder input
    tie_output: bool = True  # logits = x @ embedding^T (scaled), as in the paper
    encoder_attention: Any = Dense()
    decoder_attention: Any = Dense()
    cross_attention: Any = Dense()
    num_classes: int = 2  # encoder-only classification head
    dtype: str = "float32"  # computation dtype; logits, softmax and loss stay float32
    param_dtype: str = "float32"
    rotary_base: float = 10_000.0

    def __post_init__(self):
        positive = ("vocab_size", "d_model", "num_heads", "d_ff", "max_len", "num_classes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive integer; got {value!r}")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TransformerConfig.{name} must be a non-negative integer; got {value!r}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"TransformerConfig.num_heads={self.num_heads} must divide d_model={self.d_model} "
                "(or set head_dim explicitly)")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim <= 0):
            raise ValueError(f"TransformerConfig.head_dim must be a positive integer or None; got {self.head_dim!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"TransformerConfig.dropout_rate must be in [0, 1); got {self.dropout_rate!r}")
        choices = {"activation": ACTIVATIONS, "norm": NORMS, "norm_position": NORM_POSITIONS,
                   "position": POSITIONS, "dtype": DTYPES, "param_dtype": DTYPES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(
                    f"TransformerConfig.{name}={getattr(self, name)!r} is not one of {', '.join(valid)}")
        if self.position == "rotary" and self.resolved_head_dim % 2:
            raise ValueError(f"TransformerConfig.position='rotary' needs an even head_dim; got {self.resolved_head_dim}")
        for name, layers in (("encoder_attention", self.num_encoder_layers),
                             ("decoder_attention", self.num_decoder_layers),
                             ("cross_attention", self.num_decoder_layers)):
            value = getattr(self, name)
            if isinstance(value, (tuple, list)):
                if len(value) != layers:
                    raise ValueError(
                        f"TransformerConfig.{name} has {len(value)} specs but there are {layers} layers; "
                        "give one spec for all layers or exactly one per layer")
                object.__setattr__(self, name, tuple(value))
            for spec in self.layer_specs(name):
                if not callable(spec) or not hasattr(spec, "mask"):
                    raise ValueError(
                        f"TransformerConfig.{name} must hold attention specs from transformer_jax.attention "
                        f"(Dense(), Flash(), Windowed(w), BlockSparse()); got {spec!r}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    def layer_specs(self, name: str) -> tuple:
        """The attention spec of each layer for field `name` (a single spec is repeated)."""
        value = getattr(self, name)
        layers = self.num_encoder_layers if name == "encoder_attention" else self.num_decoder_layers
        return tuple(value) if isinstance(value, tuple) else (value,) * layers

    def replace(self, **changes) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)


def tiny(**overrides) -> TransformerConfig:
    """A few thousand parameters: fast to compile, for tests."""
    base = dict(vocab_size=64, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2,
                num_decoder_layers=2, dropout_rate=0.0, max_len=64)
    return TransformerConfig(**{**base, **overrides})


def base(**overrides) -> TransformerConfig:
    """Transformer (base), Vaswani et al. 2017, Table 3: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1."""
    return TransformerConfig(**{**dict(vocab_size=37_000, max_len=256), **overrides})


def big(**overrides) -> TransformerConfig:
    """Transformer (big), Vaswani et al. 2017, Table 3: N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
    cfg = dict(vocab_size=37_000, d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3, max_len=256)
    return TransformerConfig(**{**cfg, **overrides})


PRESETS = {"tiny": tiny, "base": base, "big": big}


def preset(name: str, **overrides) -> TransformerConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name](**overrides)
