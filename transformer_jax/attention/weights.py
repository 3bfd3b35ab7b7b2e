"""Attention weights of every pattern, computed on the side.

No kernel of the library builds the [T, S] probability matrix (Flash, Windowed and BlockSparse
run blockwise; Performer never forms scores at all), and the training path must keep it so. The
weights are instead recomputed from what each attention module hands its spec (post-rotary q, k,
the score bias and the segment ids): `MultiHeadAttention` sows `probabilities(...)` into the
`attention_weights` collection only when that collection is mutable (and not at `init`), a static
choice that `attention_weights()` makes and no training or decoding call does.

- Softmax specs (`Dense`, `Flash`, `Windowed`, `BlockSparse`, or any spec without `ImpliedWeights`):
  softmax(q k^T / sqrt(H) + bias) over the keys the spec's own static pattern `spec.mask(T, S,
  causal)` and the segment ids allow, exactly zero elsewhere. These are the weights the kernels
  apply: each kernel computes softmax attention restricted to its mask (tested against `Dense`
  under the same mask in test_attention.py).
- Kernelised specs (`Performer`) state the weights their kernel implies through `implied_weights`:
  for Performer, A[t, s] = phi(q_t).phi(k_s) / sum_s' phi(q_t).phi(k_s'), the random-feature
  approximation of softmax that its output `A v` is computed with, not the exact softmax.

Alphabet: B batch, T query length, S key length, N heads, H head dim, L layers.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.attention import masks

COLLECTION = "attention_weights"  # the Flax collection the attention modules sow into
_LAYER = re.compile(r"layer_(\d+)$")
SHARED = "shared_layer"  # cfg.share_layers (ALBERT): one block, every layer (scan.apply_layers)


@runtime_checkable
class ImpliedWeights(Protocol):
    """A spec whose weights are not a masked softmax of q.k (a kernel approximation) says what they
    are: `implied_weights(q, k, causal=..., q_segment_ids=..., kv_segment_ids=...)` -> [B, N, T, S]
    float32, rows summing to 1 over the keys a query sees (0 for a query that sees none)."""

    def implied_weights(self, q: Array, k: Array, *, causal: bool = False, q_segment_ids: Array | None = None,
                        kv_segment_ids: Array | None = None) -> Array: ...


def requested(module) -> bool:
    """Whether an attention module should sow its weights: `attention_weights()` made the collection
    mutable. Never at `init` (which makes every collection mutable): the variables stay parameters
    only, and initialising a long-context model never materialises [T, S]."""
    return module.is_mutable_collection(COLLECTION) and not module.is_initializing()


def visible(spec, q_len: int, kv_len: int, *, causal: bool, q_segment_ids: Array | None,
            kv_segment_ids: Array | None) -> Array:
    """[B or 1, 1, T, S] bool: the keys each query reads, the spec's static pattern and the segment
    ids combined as the specs combine them (one of the two ids missing means all ones)."""
    pattern = np.asarray(spec.mask(q_len, kv_len, causal), bool)  # [T S] static
    seg = None
    if q_segment_ids is not None or kv_segment_ids is not None:
        batch = (q_segment_ids if q_segment_ids is not None else kv_segment_ids).shape[0]
        qs = q_segment_ids if q_segment_ids is not None else jnp.ones((batch, q_len), jnp.int32)
        ks = kv_segment_ids if kv_segment_ids is not None else jnp.ones((batch, kv_len), jnp.int32)
        seg = masks.segment_mask(qs, ks)  # [B T S]
    return masks.combine(pattern, seg)


def masked_softmax(scores: Array, mask: Array) -> Array:
    """softmax over the last axis restricted to `mask` (broadcastable), exactly 0 outside it; a row
    with no visible entry is all zeros (what every spec returns for such a query)."""
    s = jnp.where(mask, scores, -jnp.inf)
    top = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)


def probabilities(spec, q: Array, k: Array, *, causal: bool = False, q_segment_ids: Array | None = None,
                  kv_segment_ids: Array | None = None, bias: Array | None = None) -> Array:
    """The attention weights [B, N, T, S] float32 that `spec(q, k, v, ...)` applies to v.

    q [B, T, N, H] and k [B, S, N, H] exactly as the spec receives them (after the projections, the
    attention scale and rotary positions; k with as many heads as q); `bias` [B or 1, N, T, S] as
    given to a `takes_bias` spec (T5's relative positions).
    """
    if isinstance(spec, ImpliedWeights):
        if bias is not None:
            raise ValueError(f"{spec!r} takes no score bias; its weights cannot include one")
        return spec.implied_weights(q, k, causal=causal, q_segment_ids=q_segment_ids,
                                    kv_segment_ids=kv_segment_ids).astype(jnp.float32)
    q32, k32 = q.astype(jnp.float32), k.astype(jnp.float32)
    scores = jnp.einsum("btnh,bsnh->bnts", q32, k32) / np.sqrt(q.shape[-1])  # [B N T S]
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    mask = visible(spec, q.shape[1], k.shape[1], causal=causal, q_segment_ids=q_segment_ids,
                   kv_segment_ids=kv_segment_ids)
    return masked_softmax(scores, mask)


# ---- collecting the sown weights of a whole model ------------------------------------------------

def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def _layers(sown: dict) -> dict[str, dict[int, Array]]:
    """{"encoder"|"decoder"|"cross": {layer index: [B, N, T, S]}} from the sown collection's tree.

    A layer is named `layer_<i>` in its stack, or `layers/layer_<j>` with a leading axis of groups
    under `scan_layers` (layer g * p + j, p = the blocks of one group; see scan.py), or is the i-th
    call of the one `shared_layer` under `share_layers` (its i-th sown value). A stack outside
    `encoder`/`decoder` (ViT's blocks sit at the top) counts as an encoder.
    """
    found = []  # (kind, block index j, scanned, path of the stack, [G,] B, N, T, S)
    for path, value in jax.tree_util.tree_flatten_with_path(sown)[0]:
        keys = [_key(p) for p in path]
        names = [k for k in keys if _LAYER.match(k)]
        if SHARED in keys:  # one block run once per layer: its sown tuple holds the layers in order
            at = keys.index(SHARED)
            stack = "decoder" if "decoder" in keys[:at] else "encoder"
            kind = "cross" if "cross_attention" in keys[at:] else stack
            found.append((kind, int(keys[-1]), False, tuple(keys[:at]), value))
            continue
        if not names:
            raise ValueError(f"attention weights sown outside a layer stack, at {'/'.join(keys)}; "
                             "attention_weights() reads the layers of the library's models")
        layer_at = keys.index(names[-1])
        scanned = layer_at > 0 and keys[layer_at - 1] == "layers"
        stack = "decoder" if "decoder" in keys[:layer_at] else "encoder"
        kind = "cross" if "cross_attention" in keys[layer_at:] else stack
        where = tuple(keys[:layer_at - 1 if scanned else layer_at])
        found.append((kind, int(_LAYER.match(names[-1]).group(1)), scanned, where, value))
    period = {}  # blocks per scanned group, per stack
    for kind, j, scanned, where, _ in found:
        if scanned:
            period[where] = max(period.get(where, 0), j + 1)
    out: dict[str, dict[int, Array]] = {}
    for kind, j, scanned, where, value in found:
        if scanned:
            for g in range(value.shape[0]):
                out.setdefault(kind, {})[g * period[where] + j] = value[g]
        else:
            out.setdefault(kind, {})[j] = value
    return out


def attention_weights(model, variables, *inputs, **kwargs):
    """The attention weights of every layer of `model` on `inputs`: float32 [B, N, T, S] per layer.

        weights = tj.attention_weights(model, variables, tokens)              # Encoder, MaskedLM, ...
        weights = tj.attention_weights(model, variables, src, tgt_in)        # Transformer
        weights["encoder"][0], weights["decoder"][0], weights["cross"][0]

    `inputs` and `kwargs` are what `model.apply(variables, ...)` takes (`method=` included), run
    once with the `attention_weights` collection mutable. Returns a tuple over layers for a model
    with one stack (encoder-only, decoder-only, ViT), or for an encoder-decoder a dict with
    `encoder` and `decoder` (self-attention) and `cross` tuples. Exact for softmax specs under
    their own pattern (zeros outside it, T5's relative bias, rotary positions and padding
    included); for Performer the random-feature weights its kernel applies (`Performer.
    implied_weights`). Query rows that see no key (padding) are zeros. Cached decoding
    (`decode=True`) sows nothing.
    """
    sown = collect_sown(model, variables, inputs, kwargs, COLLECTION, "attention_weights")
    if not sown:
        raise ValueError(f"{type(model).__name__} sowed no attention weights: it has no attention module "
                         "run outside cached decoding (decode=True)")
    ordered = {kind: tuple(jnp.asarray(by_index[i], jnp.float32) for i in sorted(by_index))
               for kind, by_index in _layers(sown).items()}
    if set(ordered) == {"encoder"} or set(ordered) == {"decoder"}:
        return next(iter(ordered.values()))
    return {kind: ordered.get(kind, ()) for kind in ("encoder", "decoder", "cross")}


def collect_sown(model, variables, inputs: tuple, kwargs: dict, collection: str, caller: str) -> dict:
    """Run `model.apply(variables, *inputs, **kwargs)` once, jitted, with `collection` mutable, and
    return what the model sowed there ({} if nothing). Array keyword arguments are traced, the rest
    (`method=`, flags) are static. Serves `attention_weights` and `scan.hidden_states`."""
    kwargs = dict(kwargs)
    if "mutable" in kwargs:
        raise ValueError(f"{caller}() sets `mutable` itself; pass the model's inputs only")
    arrays = {key: value for key, value in kwargs.items() if isinstance(value, (jax.Array, np.ndarray))}
    static = {key: value for key, value in kwargs.items() if key not in arrays}  # method=, flags

    @jax.jit
    def run(variables, inputs, arrays):  # one compiled program, not op-by-op dispatch
        return model.apply(variables, *inputs, mutable=[collection], **arrays, **static)[1]

    return run(variables, inputs, arrays).get(collection, {})
