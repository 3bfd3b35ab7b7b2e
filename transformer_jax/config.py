"""Model configuration: one frozen dataclass, validated on construction, and preset functions.

Only the top-level models read a `TransformerConfig`; layers receive the scalars they use.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np

from transformer_jax.attention import AttentionSpec, Dense

# "gelu" is the exact erf form, "gelu_tanh" the tanh approximation (GPT-2's "gelu_new");
# "swiglu", "geglu" and "geglu_tanh" are gated (Shazeer 2020): act(x W) * (x V).
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu", "geglu_tanh")
GATED = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
# "sinusoidal": tensor2tensor's timing signal (frequencies 10000^(-i/(D/2-1)), sin | cos halves);
# "sinusoidal_paper": the paper's frequencies 10000^(-2i/D) in the same sin | cos layout (Marian);
# "relative": T5's bucketed relative position bias (Raffel et al. 2020, section 2.1), no absolute positions.
POSITIONS = ("sinusoidal", "sinusoidal_paper", "learned", "rotary", "relative", "none")
POOLINGS = ("mean", "cls")
POOLER_ACTIVATIONS = ("tanh", "relu")
REMATS = ("none", "full", "dots", "offload")
DTYPES = ("float32", "bfloat16", "float16")

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of every model in the library (encoder-decoder, encoder-only, decoder-only).

    Attention fields take an attention spec (e.g. `Dense()`, `Windowed(128)`) for every layer, or a
    tuple with one spec per layer. Token id 0 is padding (see `pad_id`), 1 EOS, 2 BOS.

    The fields after `rotary_base` describe the published architectures that
    `transformer_jax.pretrained` loads (BERT, GPT-2, T5, BART, Marian, Llama, Mistral); any model
    can use them. Their defaults are the paper's Transformer.
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
    num_kv_heads: int | None = None  # grouped-query attention (Ainslie et al. 2023); default num_heads
    use_bias: bool = True  # biases in the attention and feed-forward projections
    norm_eps: float = 1e-6
    attention_scale: float | None = None  # scores = scale * q.k; default 1/sqrt(head_dim) (T5: 1.0)
    relative_buckets: int = 32  # position="relative": T5 buckets and the distance they cover
    relative_max_distance: int = 128
    position_offset: int = 0  # learned positions look up row position + offset (BART: 2)
    embed_scale: bool = True  # multiply token embeddings by sqrt(d_model) (section 3.4)
    embed_norm: bool = False  # a norm right after the embeddings (BERT, BART)
    type_vocab_size: int = 0  # token-type (segment A/B) embeddings, as in BERT; 0 = none
    logits_bias: bool = False  # a bias on the output logits (BERT's MLM head, BART, Marian)
    logits_scale: float = 1.0  # multiplies the final hidden state before the output head (T5: D^-0.5)
    pad_id: int | None = 0  # encoder-input padding token; None = no padding token
    pooling: str = "mean"  # EncoderClassifier: mean over tokens, or the first token ("cls", BERT)
    # Qwen3 and Gemma 3. `qk_norm`: an RMSNorm over each head's H features of q and k, after the
    # projection and before rotary positions (Dehghani et al. 2023, "Scaling Vision Transformers to
    # 22B Parameters"). `norm_scale_offset`: every norm multiplies by (offset + scale); Gemma stores
    # scale - 1, i.e. (1 + w) (offset 1.0). `sandwich_norm`: with pre-LN, a second norm on each
    # sublayer's output before the residual add, x + norm2(f(norm1(x))) (Sandwich-LN, Ding et al.
    # 2021; Gemma 2/3's post-attention and post-feedforward norms). `rotary_local_base`: the rotary
    # base of local layers, those whose spec reads a bounded window (`spec.decode_window` is set,
    # i.e. `Windowed`); None = `rotary_base` (Gemma 3: 10k local, 1M global). `logits_softcap` c:
    # logits = c * tanh(logits / c) (Gemma 2's final_logit_softcapping); None = no cap.
    qk_norm: bool = False
    norm_scale_offset: float = 0.0
    sandwich_norm: bool = False
    rotary_local_base: float | None = None
    logits_softcap: float | None = None
    pooler_activation: str = "tanh"  # the pooler's activation (BERT tanh; DistilBERT's pre_classifier relu)
    # ALBERT (Lan et al. 2020): factorised embeddings of width embed_dim (< d_model) projected up
    # to d_model, and one block whose parameters every layer of a stack reuses (held once).
    embed_dim: int | None = None  # default d_model
    share_layers: bool = False
    # Where a pretrained model came from (transformer_jax.pretrained): its family name, which
    # saving uses, and the config.json fields no other field holds (dropout probabilities, token
    # ids, id2label, ...), as sorted (key, JSON text) pairs that save_pretrained writes back.
    family: str | None = None
    hf_config: tuple[tuple[str, str], ...] = ()
    # Mixture of experts (transformer_jax/moe.py): the feed-forward of the chosen layers becomes
    # `num_experts` experts behind a router (0 = every feed-forward dense). `moe_layers` picks
    # them in each stack: an int n makes every n-th layer MoE (layers n-1, 2n-1, ...; 2 = every
    # other layer, as in Switch and GShard; 1 = all), a tuple lists layer indices. Top-1 routing is
    # Switch (Fedus et al. 2021), top-2 GShard (Lepikhin et al. 2020); each expert takes at most
    # ceil(T·k·capacity_factor/E) tokens of a row. The coefficients weight the auxiliary losses
    # the train step adds: load balance (Switch eq. 4, α) and router z-loss (ST-MoE eq. 5, c_z).
    num_experts: int = 0
    moe_layers: int | tuple[int, ...] = 2
    moe_top_k: int = 1
    moe_capacity_factor: float = 1.25
    moe_load_balance_loss: float = 0.01
    moe_router_z_loss: float = 0.001
    # Scale (transformer_jax.scan): run each stack's layers under nn.scan with stacked parameters
    # (compile time independent of depth), and rematerialise each block in the backward pass.
    scan_layers: bool = False
    remat: str = "none"  # none | full (recompute everything) | dots (keep matmuls) | offload (to host)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # numpy scalars and dtype objects are welcome
            value = getattr(self, f.name)
            if isinstance(value, np.generic):
                object.__setattr__(self, f.name, value.item())
            elif f.name in ("dtype", "param_dtype") and not isinstance(value, str):
                try:
                    object.__setattr__(self, f.name, jnp.dtype(value).name)
                except TypeError:
                    pass  # reported below with the valid names
        positive = ("vocab_size", "d_model", "num_heads", "d_ff", "max_len", "num_classes",
                    "relative_buckets", "relative_max_distance")
        for name in positive:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive integer; got {value!r}")
        for name in ("num_encoder_layers", "num_decoder_layers", "position_offset", "type_vocab_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"TransformerConfig.{name} must be a non-negative integer; got {value!r}")
        for name, low in (("num_kv_heads", 1), ("pad_id", 0)):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < low):
                raise ValueError(f"TransformerConfig.{name} must be an integer >= {low} or None; got {value!r}")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"TransformerConfig.num_kv_heads={self.num_kv_heads} must divide "
                             f"num_heads={self.num_heads}")
        if self.pad_id is not None and self.pad_id >= self.vocab_size:
            raise ValueError(f"TransformerConfig.pad_id={self.pad_id} must be < vocab_size={self.vocab_size}")
        for name in ("norm_eps", "logits_scale"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive number; got {value!r}")
        if self.attention_scale is not None and not (isinstance(self.attention_scale, numbers.Real)
                                                     and self.attention_scale > 0):
            raise ValueError(f"TransformerConfig.attention_scale must be a positive number or None; "
                             f"got {self.attention_scale!r}")
        self._check_decoder_options()
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"TransformerConfig.num_heads={self.num_heads} must divide d_model={self.d_model} "
                "(or set head_dim explicitly)")
        if self.head_dim is not None and (not _is_int(self.head_dim) or self.head_dim <= 0):
            raise ValueError(f"TransformerConfig.head_dim must be a positive integer or None; got {self.head_dim!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"TransformerConfig.dropout_rate must be in [0, 1); got {self.dropout_rate!r}")
        choices = {"activation": ACTIVATIONS, "norm": NORMS, "norm_position": NORM_POSITIONS,
                   "position": POSITIONS, "dtype": DTYPES, "param_dtype": DTYPES, "pooling": POOLINGS,
                   "pooler_activation": POOLER_ACTIVATIONS,
                   "remat": REMATS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(
                    f"TransformerConfig.{name}={getattr(self, name)!r} is not one of {', '.join(valid)}")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"TransformerConfig.scan_layers must be True or False; got {self.scan_layers!r}")
        self._check_moe()
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
                value = tuple(value)
                object.__setattr__(self, name, value)
            for spec in self._per_layer(value, layers):
                if isinstance(spec, type):
                    raise TypeError(f"TransformerConfig.{name} needs an attention spec instance, e.g. "
                                    f"{spec.__name__}(...); got the class {spec.__name__}")
                if not isinstance(spec, AttentionSpec):  # the protocol: any spec carrying its facts
                    raise ValueError(
                        f"TransformerConfig.{name} must hold attention specs (transformer_jax.attention: "
                        f"Dense(), Flash(), Windowed(w), BlockSparse(), Performer(), or any AttentionSpec); "
                        f"got {spec!r}")
                if name == "cross_attention" and not spec.exact_softmax:
                    raise ValueError(
                        f"TransformerConfig.cross_attention={spec!r} is not valid: cross-attention needs "
                        "exact softmax over every source position (cached decoding computes it densely); "
                        "use Dense() or Flash()")
                if self.position == "relative" and not spec.takes_bias:
                    raise ValueError(
                        f"TransformerConfig.{name}={spec!r} cannot add position='relative' biases; the "
                        "relative position bias needs a spec that takes a score bias, i.e. Dense()")
        self._check_albert()

    def _check_decoder_options(self) -> None:
        """The Qwen3 / Gemma options (see the field comments)."""
        for name in ("qk_norm", "sandwich_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TransformerConfig.{name} must be True or False; got {getattr(self, name)!r}")
        offset = self.norm_scale_offset
        if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or not abs(offset) < float("inf"):
            raise ValueError(f"TransformerConfig.norm_scale_offset must be a finite number (0.0: norms multiply "
                             f"by their scale; 1.0: by 1 + scale, as Gemma); got {offset!r}")
        if offset and self.norm != "rmsnorm":
            raise ValueError(f"TransformerConfig.norm_scale_offset={offset!r} needs norm='rmsnorm' (the (offset + "
                             f"scale) RMSNorm of Gemma); got norm={self.norm!r}")
        if self.sandwich_norm and self.norm_position != "pre":
            raise ValueError(f"TransformerConfig.sandwich_norm=True adds a norm after each pre-LN sublayer; it "
                             f"needs norm_position='pre', got {self.norm_position!r}")
        for name in ("rotary_local_base", "logits_softcap"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                      or not 0 < value < float("inf")):
                raise ValueError(f"TransformerConfig.{name} must be a positive number or None; got {value!r}")
        if self.rotary_local_base is not None and self.position != "rotary":
            raise ValueError(f"TransformerConfig.rotary_local_base={self.rotary_local_base!r} needs "
                             f"position='rotary'; got position={self.position!r}")

    def rotary_base_of(self, spec) -> float:
        """The rotary base of a layer with attention `spec`: `rotary_local_base` for a local layer
        (one whose spec reads a bounded window, `spec.decode_window` set), else `rotary_base`."""
        if self.rotary_local_base is not None and getattr(spec, "decode_window", None) is not None:
            return self.rotary_local_base
        return self.rotary_base

    def _check_moe(self) -> None:
        if not _is_int(self.num_experts) or self.num_experts < 0:
            raise ValueError(f"TransformerConfig.num_experts must be a non-negative integer (0 = dense); "
                             f"got {self.num_experts!r}")
        if not _is_int(self.moe_top_k) or self.moe_top_k < 1:
            raise ValueError(f"TransformerConfig.moe_top_k must be a positive integer; got {self.moe_top_k!r}")
        if self.num_experts and self.moe_top_k > self.num_experts:
            raise ValueError(f"TransformerConfig.moe_top_k={self.moe_top_k} exceeds num_experts={self.num_experts}: "
                             f"each token picks k distinct experts; use moe_top_k <= {self.num_experts}")
        factor = self.moe_capacity_factor
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 < factor < float("inf"):
            raise ValueError(f"TransformerConfig.moe_capacity_factor must be a positive number (each expert "
                             f"takes ceil(T·k·factor/E) tokens of a row); got {factor!r}")
        for name in ("moe_load_balance_loss", "moe_router_z_loss"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
                raise ValueError(f"TransformerConfig.{name} must be a number >= 0; got {value!r}")
        layers = self.moe_layers
        depth = max(self.num_encoder_layers, self.num_decoder_layers)
        if isinstance(layers, (tuple, list)):
            layers = tuple(layers)
            bad = [i for i in layers if not _is_int(i) or not 0 <= i < max(depth, 1)]
            if bad or len(set(layers)) != len(layers):
                raise ValueError(f"TransformerConfig.moe_layers={layers!r} must list distinct layer indices in "
                                 f"[0, {depth}) (or be an int n: every n-th layer)")
            object.__setattr__(self, "moe_layers", layers)
        elif not _is_int(layers) or layers < 1:
            raise ValueError(f"TransformerConfig.moe_layers must be a positive int n (every n-th layer is MoE; "
                             f"2 = every other) or a tuple of layer indices; got {layers!r}")
        if self.num_experts and not any(self.encoder_moe + self.decoder_moe):
            raise ValueError(f"TransformerConfig.num_experts={self.num_experts} with moe_layers={self.moe_layers!r} "
                             f"selects no layer of the {self.num_encoder_layers}-layer encoder or the "
                             f"{self.num_decoder_layers}-layer decoder, so no expert would be built; use "
                             "moe_layers=1 (every layer), a tuple of layer indices, or num_experts=0 (dense)")

    def _check_albert(self) -> None:
        if self.embed_dim is not None and (not _is_int(self.embed_dim) or self.embed_dim <= 0):
            raise ValueError(f"TransformerConfig.embed_dim must be a positive integer or None; got {self.embed_dim!r}")
        if self.resolved_embed_dim != self.d_model and self.num_decoder_layers:
            raise ValueError(f"TransformerConfig.embed_dim={self.embed_dim} differs from d_model={self.d_model}: "
                             "factorised embeddings are for encoder-only models (num_decoder_layers=0)")
        if not isinstance(self.share_layers, bool):
            raise ValueError(f"TransformerConfig.share_layers must be True or False; got {self.share_layers!r}")
        if self.share_layers and self.num_decoder_layers:
            raise ValueError("TransformerConfig.share_layers=True is for encoder-only models (a decoding cache "
                             "per layer needs a block per layer); set num_decoder_layers=0")
        if self.share_layers and self.scan_layers:
            raise ValueError("TransformerConfig.share_layers=True holds one block for every layer; it cannot be "
                             "combined with scan_layers=True (nothing to stack): set scan_layers=False")
        if self.share_layers and (len(set(self.encoder_specs)) > 1 or len(set(self.decoder_specs)) > 1
                                  or any(self.encoder_moe) or any(self.decoder_moe)):
            raise ValueError("TransformerConfig.share_layers=True needs identical layers: one attention spec "
                             "per stack and no mixture-of-experts layers")
        if not isinstance(self.hf_config, tuple):  # lists from a serialised config
            object.__setattr__(self, "hf_config", tuple(tuple(p) for p in self.hf_config))

    @property
    def resolved_embed_dim(self) -> int:
        return self.embed_dim or self.d_model

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def encoder_specs(self) -> tuple[AttentionSpec, ...]:
        """The self-attention spec of each encoder layer (a single spec is repeated)."""
        return self._per_layer(self.encoder_attention, self.num_encoder_layers)

    @property
    def decoder_specs(self) -> tuple[AttentionSpec, ...]:
        """The causal self-attention spec of each decoder layer."""
        return self._per_layer(self.decoder_attention, self.num_decoder_layers)

    @property
    def cross_specs(self) -> tuple[AttentionSpec, ...]:
        """The cross-attention spec of each decoder layer."""
        return self._per_layer(self.cross_attention, self.num_decoder_layers)

    @property
    def length_invariant(self) -> bool:
        """Outputs at real positions do not depend on how much trailing padding there is, so
        evaluation may trim it: every attention spec says so, and no MoE layer (expert capacity is
        set by the padded length)."""
        specs = self.encoder_specs + self.decoder_specs + self.cross_specs
        return self.num_experts == 0 and all(getattr(s, "length_invariant", False) for s in specs)

    @property
    def encoder_moe(self) -> tuple[bool, ...]:
        """Whether each encoder layer's feed-forward is a mixture of experts (`moe_layers`)."""
        return self._moe_flags(self.num_encoder_layers)

    @property
    def decoder_moe(self) -> tuple[bool, ...]:
        """Whether each decoder layer's feed-forward is a mixture of experts (`moe_layers`)."""
        return self._moe_flags(self.num_decoder_layers)

    def _moe_flags(self, layers: int) -> tuple[bool, ...]:
        if not self.num_experts:
            return (False,) * layers
        if isinstance(self.moe_layers, tuple):
            return tuple(i in self.moe_layers for i in range(layers))
        return tuple((i + 1) % self.moe_layers == 0 for i in range(layers))

    @staticmethod
    def _per_layer(value, layers: int) -> tuple:
        return tuple(value) if isinstance(value, tuple) else (value,) * layers

    def replace(self, **changes) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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
