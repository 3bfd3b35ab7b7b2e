"""Scanned layer stacks, rematerialisation, and conversion between stacked and per-layer parameters.

A stack of N identical layers written as a Python loop is traced and compiled N times; under
`nn.scan` it is traced once and XLA compiles one loop body, so compile time stops growing with
depth (the MaxText / T5X `scan_layers` option). Layers must be identical to share a body, so a
stack whose layers differ (per-layer attention specs such as `(Windowed, Windowed, Dense) * 4`)
is scanned over its repeating *group*: the shortest period p of the per-layer pattern, here 3, and
each scan step runs the p blocks of one group. Parameters then live at
`<stack>/layers/layer_<j>/...` with a leading axis of N / p (logical name `layers`, replicated by
the rules table); layer i = g * p + j is group g's block j. A pattern with no shorter period is
one group of N blocks, scanned once: correct, but with no compile-time saving.

Rematerialisation (`remat`, Chen et al. 2016 "Training Deep Nets with Sublinear Memory Cost")
wraps each block in `nn.remat` with a `jax.checkpoint_policies` policy deciding which forward
values the backward pass may keep:
- "full":    keep nothing but the block's input; recompute the whole block.
- "dots":    keep matmul outputs without batch dimensions (projections and the feed-forward);
             recompute the cheap elementwise work and the attention scores.
- "offload": as "dots", but the kept matmul outputs move to pinned host memory and back.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax.attention.weights import collect_sown
from transformer_jax.config import TransformerConfig

STACKS = ("encoder", "decoder")
SCAN_NAME = "layers"  # the module holding a scanned stack, and the logical name of its leading axis
HIDDEN = "hidden_states"  # the Flax collection `hidden_states()` makes mutable (see below)


# ---- the repeating pattern ---------------------------------------------------------------------

def encoder_kinds(cfg: TransformerConfig) -> tuple[tuple, ...]:
    """Per encoder layer: the block's constructor arguments after `cfg` (self-attention spec, MoE or not)."""
    return tuple(zip(cfg.encoder_specs, cfg.encoder_moe))


def decoder_kinds(cfg: TransformerConfig, cross: bool) -> tuple[tuple, ...]:
    """Per decoder layer: (self-attention spec, cross-attention spec or None for decoder-only, MoE or not)."""
    cross_specs = cfg.cross_specs if cross else (None,) * cfg.num_decoder_layers
    return tuple(zip(cfg.decoder_specs, cross_specs, cfg.decoder_moe))


def period(kinds: tuple) -> int:
    """The shortest p dividing len(kinds) with kinds[i] == kinds[i % p]: the group one scan step runs."""
    n = len(kinds)
    return next(p for p in range(1, n + 1)
                if n % p == 0 and all(kinds[i] == kinds[i % p] for i in range(n)))


# ---- rematerialisation ---------------------------------------------------------------------------

def _host_offload_supported() -> bool:
    """Host offload needs a pinned host memory space and a backend whose compiler moves values there
    (GPU, TPU); XLA:CPU lists `pinned_host` but device memory is host memory, so nothing is saved."""
    device = jax.devices()[0]
    kinds = {m.kind for m in device.addressable_memories()}
    return device.platform != "cpu" and {"device", "pinned_host"} <= kinds


def remat_policy(name: str) -> Callable[..., bool] | None:
    """The `jax.checkpoint_policies` policy of a `TransformerConfig.remat` value ("full": None, i.e.
    save nothing). "offload" on a backend without host offload (CPU) warns and uses "dots"."""
    policies = jax.checkpoint_policies
    if name == "full":
        return None
    if name == "dots":
        return policies.dots_with_no_batch_dims_saveable
    if name == "offload":
        if not _host_offload_supported():
            warnings.warn(f"TransformerConfig.remat='offload': the {jax.default_backend()} backend has no "
                          "separate host memory to offload to; using remat='dots' (the same values, kept "
                          "on the device)", stacklevel=2)
            return policies.dots_with_no_batch_dims_saveable
        return policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    raise ValueError(f"TransformerConfig.remat={name!r} has no policy; valid: full, dots, offload")


def check_remat(cfg: TransformerConfig) -> None:
    """remat outside a scan is refused where it cannot work: the compiled CPU program keeps none of
    the optimisation barriers that hold the recomputation in the backward pass, so an unscanned
    stack's compiled temporaries stay the same (measured: README, Scale). Under `scan_layers` the
    loop keeps the layers apart and remat works."""
    if not cfg.scan_layers and jax.default_backend() == "cpu":
        raise ValueError(f"TransformerConfig.remat={cfg.remat!r} needs scan_layers=True on the cpu backend: "
                         "unscanned, XLA:CPU folds the recomputation back into the forward pass and saves no "
                         "memory; set scan_layers=True (same parameters, stacked), or remat='none'")


# ---- running a stack -----------------------------------------------------------------------------

class LayerGroup(nn.Module):
    """One repeat of a stack's layer pattern, the body of the scan: blocks layer_0..layer_{p-1}.

    `args` are the blocks' call arguments after x, the same for every layer (broadcast by the scan).
    """

    cfg: TransformerConfig
    block: Any  # EncoderBlock or DecoderBlock, possibly wrapped in nn.remat
    kinds: tuple  # per block: constructor arguments after cfg

    @nn.compact
    def __call__(self, x, *args):
        for j, kind in enumerate(self.kinds):
            x = self.block(self.cfg, *kind, name=f"layer_{j}")(x, *args)
            sow_hidden(self, f"output_{j}", x)  # stacked by the scan: [N / p, B, T, D]
        return x, None


def apply_layers(cfg: TransformerConfig, block: type[nn.Module], kinds: tuple, static_argnums: tuple,
                 x, *args, remat: bool = True):
    """Run x [B, T, D] through one block per entry of `kinds`, called as `block(x, *args)`.

    Call from inside a compact module (the stack): the blocks become its children, `layer_<i>`
    when unscanned or `layers/layer_<j>` (stacked) under `cfg.scan_layers`. `static_argnums` name
    the Python-valued call arguments (counting self as 0) that nn.remat must not trace; `remat=False`
    skips rematerialisation (cached decoding has no backward pass). `cfg.share_layers` makes one
    block, `shared_layer`, that every layer runs.

    When `hidden_states()` asks (the `hidden_states` collection mutable), the stack's input x is
    sown as `embeddings` and each layer's output as `output_<i>` (`layers/output_<j>`, stacked,
    when scanned), in the stack's scope; the stack itself sows its final output as `last`.
    """
    if remat and cfg.remat != "none":
        check_remat(cfg)
        block = nn.remat(block, policy=remat_policy(cfg.remat), static_argnums=static_argnums,
                         prevent_cse=not cfg.scan_layers)  # scan already stops CSE across layers
    if cfg.share_layers:  # ALBERT: one block, its parameters held once, run len(kinds) times
        shared = block(cfg, *kinds[0], name="shared_layer")
        sow_hidden(shared.parent, "embeddings", x)  # parent: the stack calling apply_layers
        for i in range(len(kinds)):
            x = shared(x, *args)
            sow_hidden(shared.parent, f"output_{i}", x)
        return x
    if not cfg.scan_layers:
        for i, kind in enumerate(kinds):
            layer = block(cfg, *kind, name=f"layer_{i}")
            if i == 0:
                sow_hidden(layer.parent, "embeddings", x)
            x = layer(x, *args)
            sow_hidden(layer.parent, f"output_{i}", x)
        return x
    p = period(kinds)
    # "aux_loss", "moe_metrics": moe.AUX_LOSS, moe.METRICS; "attention_weights": attention.weights.COLLECTION
    scanned = nn.scan(LayerGroup, variable_axes={"params": 0, "cache": 0, "intermediates": 0, "aux_loss": 0,
                                                 "moe_metrics": 0, "attention_weights": 0, HIDDEN: 0},
                      split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * len(args),
                      length=len(kinds) // p, metadata_params={nn.PARTITION_NAME: SCAN_NAME})
    group = scanned(cfg, block, kinds[:p], name=SCAN_NAME)
    sow_hidden(group.parent, "embeddings", x)
    x, _ = group(x, *args)
    return x


# ---- every layer's hidden state, on request ------------------------------------------------------

def sow_hidden(module: nn.Module, name: str, x) -> None:
    """Sow x into `module`'s `hidden_states` collection, only when `hidden_states()` made it mutable
    (never at `init`, which makes every collection mutable, nor in training or decoding)."""
    if module.is_mutable_collection(HIDDEN) and not module.is_initializing():
        module.sow(HIDDEN, name, x)


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def _stacks(sown) -> dict[str, tuple]:
    """{"encoder"|"decoder": (embeddings, layer 1, ..., layer N)} from the sown collection's tree."""
    out = {}
    def visit(tree, path):
        if not isinstance(tree, dict):
            return
        if "embeddings" in tree:
            outputs = {int(k[len("output_"):]): v[-1] for k, v in tree.items() if k.startswith("output_")}
            scanned = {int(k[len("output_"):]): v[-1] for k, v in tree.get(SCAN_NAME, {}).items()
                       if k.startswith("output_")}
            for j, value in scanned.items():  # layer g * p + j is group g's block j
                for g in range(value.shape[0]):
                    outputs[g * len(scanned) + j] = value[g]
            layers = [outputs[i] for i in sorted(outputs)]
            if "last" in tree:  # after the final norm of a pre-LN stack (the reference's last entry)
                layers[-1] = tree["last"][-1]
            out["decoder" if "decoder" in path else "encoder"] = (tree["embeddings"][-1], *layers)
            return
        for key, value in tree.items():
            visit(value, path + (key,))
    visit(sown, ())
    return out


def hidden_states(model, variables, *inputs, **kwargs):
    """Every layer's hidden state of `model` on `inputs`, as the reference's `output_hidden_states=True`:
    a tuple of num_layers + 1 arrays [B, T, D], the embedding output (the first layer's input), then
    each layer's output, the last one after the final norm of a pre-LN stack (so it equals
    `last_hidden_state`), except for ViT, whose last entry is, as the reference's `ViTModel`'s,
    the last layer's output before the final norm.

        states = tj.hidden_states(model, variables, tokens)                      # Encoder, MaskedLM, DecoderLM...
        states = tj.hidden_states(model, variables, **inputs, method="forward")  # the reference's input names
        states = tj.hidden_states(model, variables, src, tgt_in)                 # {"encoder": ..., "decoder": ...}

    `inputs` and `kwargs` are what `model.apply(variables, ...)` takes (`method=` included), run once
    with the `hidden_states` collection mutable; scanned stacks come back unstacked in layer order.
    For an encoder-decoder, a dict with `encoder` and `decoder` tuples. Call it without `decode`
    or `logits_at` (with `logits_at` the decoder's last entry is the last layer's output, not
    final-normed).
    """
    stacks = _stacks(collect_sown(model, variables, inputs, kwargs, HIDDEN, "hidden_states"))
    if not stacks:
        raise ValueError(f"{type(model).__name__} sowed no hidden states: it runs no layer stack here")
    if len(stacks) == 1:
        return next(iter(stacks.values()))
    return {kind: stacks.get(kind, ()) for kind in STACKS}


# ---- conversion between per-layer and stacked parameters -----------------------------------------

def _stack_kinds(cfg: TransformerConfig, name: str, tree: dict) -> tuple:
    if name == "encoder":
        return encoder_kinds(cfg)
    first = tree[SCAN_NAME]["layer_0"] if SCAN_NAME in tree else tree["layer_0"]
    return decoder_kinds(cfg, cross="cross_block" in first)


def _stack_values(values):
    if isinstance(values[0], jax.ShapeDtypeStruct):  # abstract trees (eval_shape, checkpoint targets)
        return jax.ShapeDtypeStruct((len(values),) + tuple(values[0].shape), values[0].dtype)
    return jnp.stack(values)


def _slice(value, g: int):
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(tuple(value.shape[1:]), value.dtype)
    return value[g]


def _stack(leaves):
    if isinstance(leaves[0], nn.Partitioned):
        return leaves[0].replace(value=_stack_values([x.value for x in leaves]),
                                 names=(SCAN_NAME,) + tuple(leaves[0].names))
    return _stack_values(leaves)


def _unstack(x, n: int) -> list:
    if isinstance(x, nn.Partitioned):
        return [x.replace(value=_slice(x.value, g), names=tuple(x.names)[1:]) for g in range(n)]
    return [_slice(x, g) for g in range(n)]


def _is_leaf(x) -> bool:
    return isinstance(x, nn.Partitioned)


def _has_layers(tree) -> bool:
    return isinstance(tree, dict) and ("layer_0" in tree or SCAN_NAME in tree)


def _convert(tree, cfg: TransformerConfig, convert_stack, root: str | None = None):
    """Apply convert_stack(stack_tree, kinds) to every `encoder`/`decoder` subtree holding layers
    (or to the tree itself, the parameters of a bare Encoder or Decoder, when `root` names it)."""
    if root is not None:
        if root not in STACKS:
            raise ValueError(f"root={root!r} must be one of {', '.join(STACKS)} or None")
        if _has_layers(tree):
            return convert_stack(tree, _stack_kinds(cfg, root, tree))
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key in STACKS and _has_layers(value):
            out[key] = convert_stack(value, _stack_kinds(cfg, key, value))
        else:
            out[key] = _convert(value, cfg, convert_stack)
    return out


def stack_layers(params: dict, cfg: TransformerConfig, root: str | None = None) -> dict:
    """Per-layer parameters (`encoder/layer_<i>/...`) -> the `cfg.scan_layers=True` layout
    (`encoder/layers/layer_<j>/...`, leading axis N / p). Works on `variables` or `variables["params"]`
    of any model, on plain or logically partitioned (boxed) leaves; stacks already stacked are left
    alone. `root="encoder"` (or "decoder") converts the parameters of a bare Encoder (Decoder)."""
    def convert(stack: dict, kinds: tuple) -> dict:
        if SCAN_NAME in stack:
            return stack
        n, p = len(kinds), period(kinds)
        rest = {k: v for k, v in stack.items() if not k.startswith("layer_")}
        groups = {f"layer_{j}": jax.tree.map(lambda *xs: _stack(xs), *[stack[f"layer_{g * p + j}"]
                                                                      for g in range(n // p)],
                                              is_leaf=_is_leaf)
                  for j in range(p)}
        return {**rest, SCAN_NAME: groups}
    return _convert(params, cfg, convert, root)


def unstack_layers(params: dict, cfg: TransformerConfig, root: str | None = None) -> dict:
    """The inverse of `stack_layers`: the `scan_layers=True` layout -> per-layer `layer_<i>` trees."""
    def convert(stack: dict, kinds: tuple) -> dict:
        if SCAN_NAME not in stack:
            return stack
        n, p = len(kinds), period(kinds)
        out = {k: v for k, v in stack.items() if k != SCAN_NAME}
        for j in range(p):
            leaves, treedef = jax.tree.flatten(stack[SCAN_NAME][f"layer_{j}"], is_leaf=_is_leaf)
            split = [_unstack(x, n // p) for x in leaves]  # per leaf: one slice per group
            for g in range(n // p):
                out[f"layer_{g * p + j}"] = jax.tree.unflatten(treedef, [xs[g] for xs in split])
        return out
    return _convert(params, cfg, convert, root)
