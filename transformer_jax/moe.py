"""Mixture-of-experts feed-forward: top-1 (Switch) or top-2 (GShard) routing, expert parallelism.

`MoEMLP` replaces the dense `layers.MLP` in the layers `TransformerConfig.moe_layers` picks. A
float32 router scores the E experts for every token; each token goes to its top-k experts
(Switch Transformer, Fedus et al. 2021: k = 1, the output scaled by the router probability;
GShard, Lepikhin et al. 2020: k = 2, the two gates renormalised to sum to 1). Each expert holds
at most C tokens of a group (a batch row), C = ceil(T · k · capacity_factor / E); tokens past
that are dropped (their feed-forward output is zero, so the residual carries them unchanged).
Padding tokens (segment id 0) are not routed: they take no slot and do not count in the
auxiliary losses.

Dispatch and combine are einsums over one-hot tensors (GShard, section 3.2), not a sort:

    expert_in [E B C D] = einsum('btec,btd->ebcd', dispatch, x)
    y         [B T D]   = einsum('btec,ebcd->btd', combine, expert_out)

Why einsums: every step is a dense contraction that GSPMD partitions by the logical axes alone
(the batch rows arrive sharded over the batch axes, the dispatched tensor is constrained to
`expert` x `expert_batch`, and XLA inserts the all-to-all between them), the routing is exact
and deterministic, and the gradient flows to the gates through `combine`. A sort-based dispatch
saves the O(T·E·C) one-hot tensors, but its gathers and scatters do not shard by annotation and
at this library's group sizes (a row of <= a few hundred tokens) the one-hot tensors are small.
Groups are batch rows, so routing positions (a cumsum over the row) never cross devices.

Alphabet: B batch rows (the routing groups), T tokens of a row, D model dim, F expert hidden
dim, E experts, K choices per token, C capacity (slots per expert per row).

Auxiliary losses are sown, already weighted, into the `aux_loss` collection, which the train
step adds to the loss (train/step.py); diagnostics go to `moe_metrics`:
- load balance (Switch eq. 4): E · Σ_i f_i · P_i, f_i the fraction of tokens whose first choice
  is expert i, P_i the mean router probability of expert i; 1.0 when perfectly balanced.
- router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): mean over tokens of logsumexp(logits)².
- dropped_fraction: the share of the B·T·k (token, choice) assignments past capacity.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from transformer_jax.config import GATED
from transformer_jax.layers import activation_fn, partitioned

Dtype = Any

AUX_LOSS = "aux_loss"  # weighted auxiliary losses; the train step adds their sum to the loss
METRICS = "moe_metrics"  # diagnostics, logged by the train step as moe_<name> (mean over layers)


def capacity(tokens_per_group: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert and group: ceil(T · k · factor / E), at most T (an expert cannot receive a
    token twice, so more slots than tokens would stay empty)."""
    exact = tokens_per_group * top_k * capacity_factor / num_experts
    return max(1, min(tokens_per_group, math.ceil(exact - 1e-9)))


class Routing(NamedTuple):
    """What the router decided for a [B, T] batch of tokens (all arrays are float32)."""

    dispatch: Array  # [B T E C] 1 where token t sits in slot c of expert e
    combine: Array  # [B T E C] the gate weight of that slot (0 where dropped)
    probs: Array  # [B T E] router softmax
    first_choice: Array  # [B T] int, each token's top expert (before capacity)
    dropped: Array  # [] number of (token, choice) assignments past capacity


def route(logits: Array, top_k: int, capacity_slots: int, real: Array | None = None) -> Routing:
    """Top-k routing with capacity: float32 logits [B, T, E] -> `Routing`.

    Slots are filled as in GShard's Algorithm 1: all first choices in token order, then all
    second choices, so a token loses its second expert before any token loses its first.
    `real` [B, T] bool (default all): padding tokens choose no expert, so they take no slot.
    """
    b, t, e = logits.shape
    real = jnp.ones((b, t), bool) if real is None else real
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [B T E]
    gates, experts = jax.lax.top_k(probs, top_k)  # [B T K]
    if top_k > 1:  # GShard: the k gates renormalised; Switch (k = 1) keeps the raw probability
        gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    chosen = jax.nn.one_hot(experts, e, dtype=jnp.int32) * real[:, :, None, None]  # [B T K E]
    by_priority = jnp.swapaxes(chosen, 1, 2).reshape(b, top_k * t, e)  # [B K·T E], choice-major
    position = jnp.cumsum(by_priority, axis=1) - 1  # [B K·T E] slot index within each expert
    position = jnp.swapaxes(position.reshape(b, top_k, t, e), 1, 2)  # [B T K E]
    slot = jnp.sum(position * chosen, axis=-1)  # [B T K] the slot of each choice in its expert
    # one_hot of an index >= C is all zeros: a choice past capacity gets no slot (it is dropped)
    in_slot = jax.nn.one_hot(slot, capacity_slots, dtype=jnp.float32)  # [B T K C]
    chosen_f = chosen.astype(jnp.float32)
    dispatch = jnp.einsum("btke,btkc->btec", chosen_f, in_slot)  # [B T E C]
    combine = jnp.einsum("btk,btke,btkc->btec", gates, chosen_f, in_slot)  # [B T E C]
    dropped = jnp.sum(real) * top_k - jnp.sum(dispatch)
    return Routing(dispatch, combine, probs, experts[..., 0], dropped)


def _mean_over(x: Array, real: Array | None) -> Array:
    """Mean of x [B T ...] over the real tokens (all when `real` is None) -> [...]."""
    if real is None:
        return jnp.mean(x, axis=(0, 1))
    w = real.astype(jnp.float32).reshape(*real.shape, *(1,) * (x.ndim - 2))
    return jnp.sum(x * w, axis=(0, 1)) / jnp.maximum(jnp.sum(w), 1.0)


def load_balance_loss(probs: Array, first_choice: Array, real: Array | None = None) -> Array:
    """Switch Transformer eq. 4 without α: E · Σ_i f_i · P_i over the (real) tokens (1.0 when uniform).

    probs [B T E] float32, first_choice [B T] int -> [] float32. f_i (a count) carries no
    gradient; P_i does, which pushes probability away from overloaded experts.
    """
    e = probs.shape[-1]
    f = _mean_over(jax.nn.one_hot(first_choice, e, dtype=jnp.float32), real)  # [E]
    p = _mean_over(probs, real)  # [E]
    return e * jnp.sum(f * p)


def router_z_loss(logits: Array, real: Array | None = None) -> Array:
    """ST-MoE eq. 5 without c_z: mean over (real) tokens of logsumexp(logits)², [B T E] -> [] float32.
    Keeps the router logits small, where float32 softmax stays accurate."""
    return _mean_over(jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)), real)


def _expert_init():
    """Glorot-uniform per expert: fans over D and F, the expert axis is a batch of matrices."""
    return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=1, out_axis=2, batch_axis=(0,))


class MoEMLP(nn.Module):
    """A mixture-of-experts feed-forward, [B, T, D] -> [B, T, D]; each expert is `layers.MLP`'s
    computation (same activations, gated ones included) with its own weights.

    Weights are [E, D, F] and [E, F, D] with logical axes ('expert', 'embed', 'mlp'), so the rules
    table (sharding.py) places experts on the `expert` mesh axis; the dispatched activations are
    constrained to ('expert', 'expert_batch', ...), so each device computes only its experts.
    """

    num_experts: int
    d_ff: int
    activation: str = "relu"
    top_k: int = 1
    capacity_factor: float = 1.25
    load_balance_weight: float = 0.01  # Switch's α
    z_loss_weight: float = 0.001  # ST-MoE's c_z
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array | None = None) -> Array:
        """x [B T D] -> [B T D]; tokens with segment id 0 (padding) are not routed and do not count in
        the auxiliary losses."""
        b, t, d = x.shape
        real = None if segment_ids is None else segment_ids != 0  # [B T]
        e, f = self.num_experts, self.d_ff
        # The router in float32 with a 10x smaller initial scale (Switch section 2.4: selective
        # precision and a smaller initialisation keep routing stable), so it starts near uniform.
        router = self.param("router", partitioned(nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal"),
                                                  "embed", None), (d, e), self.param_dtype)
        logits = jnp.einsum("btd,de->bte", x.astype(jnp.float32), jnp.asarray(router, jnp.float32))  # [B T E]
        routing = route(logits, self.top_k, capacity(t, e, self.top_k, self.capacity_factor), real)

        def weight(name, shape, axes, init=_expert_init()):
            return jnp.asarray(self.param(name, partitioned(init, *axes), shape, self.param_dtype), self.dtype)

        def bias(name, features, axis):
            if not self.use_bias:
                return 0.0
            w = weight(name, (e, features), ("expert", axis), nn.initializers.zeros_init())
            return w[:, None, None, :]  # [E 1 1 features]

        expert_in = jnp.einsum("btec,btd->ebcd", routing.dispatch.astype(self.dtype), x.astype(self.dtype))
        expert_in = nn.with_logical_constraint(expert_in, ("expert", "expert_batch", None, "embed"))  # [E B C D]
        h = jnp.einsum("ebcd,edf->ebcf", expert_in, weight("wi", (e, d, f), ("expert", "embed", "mlp")))
        h = activation_fn(self.activation)(h + bias("wi_bias", f, "mlp"))  # [E B C F]
        if self.activation in GATED:
            h = h * (jnp.einsum("ebcd,edf->ebcf", expert_in, weight("wi_gate", (e, d, f), ("expert", "embed", "mlp")))
                     + bias("wi_gate_bias", f, "mlp"))
        h = nn.with_logical_constraint(h, ("expert", "expert_batch", None, "mlp"))
        out = jnp.einsum("ebcf,efd->ebcd", h, weight("wo", (e, f, d), ("expert", "mlp", "embed")))
        out = nn.with_logical_constraint(out + bias("wo_bias", d, "embed"), ("expert", "expert_batch", None, "embed"))
        y = jnp.einsum("btec,ebcd->btd", routing.combine.astype(self.dtype), out)  # [B T D]

        balance = load_balance_loss(routing.probs, routing.first_choice, real)
        z = router_z_loss(logits, real)
        self.sow(AUX_LOSS, "load_balance", self.load_balance_weight * balance)
        self.sow(AUX_LOSS, "router_z", self.z_loss_weight * z)
        self.sow(METRICS, "load_balance", balance)
        self.sow(METRICS, "router_z", z)
        assignments = b * t * self.top_k if real is None else jnp.maximum(jnp.sum(real), 1) * self.top_k
        self.sow(METRICS, "dropped_fraction", routing.dropped / assignments)
        return y
