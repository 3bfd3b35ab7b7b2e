"""Performer: softmax attention approximated by positive orthogonal random features, in O(n) time
and memory (Choromanski et al. 2021, "Rethinking Attention with Performers", FAVOR+).

exp(q.k / sqrt(H)) = E_w[phi(q') phi(k')] for w ~ N(0, I_H), q' = q / H^(1/4), k' = k / H^(1/4) and

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)      (W: [m, H], the random features; eq. 7 of the paper)

so attention becomes out_t = sum_s phi(q_t).phi(k_s) v_s / sum_s phi(q_t).phi(k_s), computed as
phi(q_t) . (sum_s phi(k_s) v_s^T) without ever forming the [T, S] matrix. The rows of W are
orthogonal within blocks of H (QR of a Gaussian block) with Gaussian lengths (chi_H), drawn once
from `seed` with NumPy: the features are fixed per spec, shared by every head and every layer that
uses the spec, and never redrawn.

Numerics. The definition has no stabiliser; the code multiplies phi(q_t) by one constant per query
and every phi(k_s) by one constant per (batch, head) (a running maximum of the key logits, rescaling
the sums when it grows, as in online softmax), which cancel between numerator and denominator. Sums
are float32 whatever the input dtype; a query with no visible key returns zeros.

Causal attention scans over chunks of `chunk_size` positions carrying the prefix sums
S = sum phi(k) v^T [B, N, m, H] and z = sum phi(k) [B, N, m]; inside a chunk the causal products are
a [chunk, chunk] tile. Segment ids (0 = padding) are handled the same way for both directions:
padding keys get zero features, padding queries return zeros, and the carried sums are reset where
the segment id changes, so packed examples never see each other. This treats each contiguous run
of one id as a segment, which is what packing produces (an id that reappears after another id
starts a new segment, unlike `Dense`'s mask). Bidirectional attention is one global sum when every
row holds one example (no segment ids, or padding only: checked at run time, `lax.cond`); packed
rows scan forward (earlier chunks and the whole current chunk) and backward (later chunks), about
3-4x the cost, and need T == S.

Decoding (`decode_step`) keeps S, z and the running maximum per (batch, head): a fixed-size state
whatever the length, equal to the causal pass position by position.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from transformer_jax.attention import masks
from transformer_jax.attention.base import check_qkv
from transformer_jax.attention.blockwise import cdiv

NEG = -1e30  # the running maximum before any key (finite: NEG - NEG must be 0, not NaN)


@functools.lru_cache(maxsize=64)
def orthogonal_features(num_features: int, head_dim: int, seed: int) -> np.ndarray:
    """[num_features, head_dim] float64 positive-orthogonal random features W, deterministic in seed.

    Blocks of head_dim rows are the orthonormal Q of a Gaussian matrix; each row is then scaled to
    the length of an independent Gaussian vector, so every row is marginally N(0, I) (Choromanski et
    al. 2021, section 2.4) while rows within a block stay exactly orthogonal.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(cdiv(num_features, head_dim)):
        q, r = np.linalg.qr(rng.standard_normal((head_dim, head_dim)))
        blocks.append((q * np.sign(np.diag(r))).T)  # the sign fix makes Q Haar-uniform (else biased)
    w = np.concatenate(blocks)[:num_features]
    w = w * np.linalg.norm(rng.standard_normal((num_features, head_dim)), axis=1)[:, None]
    w.flags.writeable = False
    return w


def feature_logits(x: Array, w: np.ndarray) -> Array:
    """x [B, T, N, H] -> W x' - |x'|^2 / 2 [B, T, N, m] in float32, x' = x / H^(1/4); phi = exp(this) / sqrt(m)."""
    x = x.astype(jnp.float32) * x.shape[-1] ** -0.25
    return jnp.einsum("btnh,mh->btnm", x, jnp.asarray(w, jnp.float32)) - 0.5 * jnp.sum(x * x, -1, keepdims=True)


def query_features(lq: Array) -> Array:
    """phi(q) up to one constant per query (cancels in the ratio): the largest feature is 1."""
    return jnp.exp(lq - jax.lax.stop_gradient(jnp.max(lq, axis=-1, keepdims=True)))


def _chunk_scan(pq: Array, lk: Array, v: Array, qseg: Array, kseg: Array, chunk: int, intra: str | None,
                reverse: bool) -> tuple[Array, Array, Array]:
    """Chunked prefix sums over contiguous runs of key segment ids.

    pq [B, T, N, m] query features, lk [B, T, N, m] key logits, v [B, T, N, H], qseg / kseg [B, T]
    segment ids of queries / keys (0 = padding; a query sees keys of its own id).
    Returns num [B, T, N, H], den [B, T, N] and the log-scale M [B, T, N] they carry (true values are
    num * exp(M)). Each query gets the carried sums of earlier chunks when it is in the run the
    carry holds, plus, within its chunk, keys j <= i (`intra="causal"`), every key of its run
    (`"all"`), or none (None). `reverse` scans from the end (the carry is then the later chunks).
    """
    B, T, N, m = pq.shape
    H = v.shape[-1]
    nc = cdiv(T, chunk)
    pad = nc * chunk - T

    def chunks(x):  # [B, T, ...] -> [nc, B, chunk, ...]; padded positions have segment 0
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))  # pad, then flip: the chunks
        x = jnp.flip(x, 1) if reverse else x  # of both directions cover the same positions
        return jnp.moveaxis(x.reshape((B, nc, chunk) + x.shape[2:]), 1, 0)

    tril = jnp.asarray(np.tril(np.ones((chunk, chunk), bool)))

    def body(carry, xs):
        S, z, M, cs = carry  # [B N m H], [B N m], [B N], [B]
        pqc, lkc, vc, qc, kc = xs  # [B c N m], [B c N m], [B c N H], [B c], [B c]
        valid = (kc != 0)[:, :, None, None]  # [B c 1 1]
        M_new = jnp.maximum(M, jnp.max(jnp.where(valid, lkc, NEG), axis=(1, 3)))  # [B N]
        ek = jnp.exp(jnp.where(valid, lkc - M_new[:, None, :, None], -jnp.inf))  # [B c N m], 0 for padding
        decay = jnp.exp(M - M_new)
        S, z = S * decay[:, :, None, None], z * decay[:, :, None]
        from_carry = ((qc == cs[:, None]) & (qc != 0)).astype(jnp.float32)  # [B c]
        num = jnp.einsum("bcnm,bnmh->bcnh", pqc, S) * from_carry[:, :, None, None]
        den = jnp.einsum("bcnm,bnm->bcn", pqc, z) * from_carry[:, :, None]
        if intra is not None:
            see = (qc[:, :, None] == kc[:, None, :]) & (kc[:, None, :] != 0)  # [B t s]
            if intra == "causal":
                see = see & tril
            a = jnp.einsum("btnm,bsnm->bnts", pqc, ek) * see[:, None]  # [B N c c]
            num = num + jnp.einsum("bnts,bsnh->btnh", a, vc)
            den = den + jnp.sum(a, -1).transpose(0, 2, 1)
        last = kc[:, -1]  # the run still open at the chunk's end carries on
        keep = (cs == last).astype(jnp.float32)
        ekl = ek * (kc == last[:, None]).astype(jnp.float32)[:, :, None, None]
        S = S * keep[:, None, None, None] + jnp.einsum("bcnm,bcnh->bnmh", ekl, vc)
        z = z * keep[:, None, None] + jnp.sum(ekl, 1)
        return (S, z, M_new, last), (num, den, jnp.broadcast_to(M_new[:, None], (B, chunk, N)))

    init = (jnp.zeros((B, N, m, H), jnp.float32), jnp.zeros((B, N, m), jnp.float32),
            jnp.full((B, N), NEG, jnp.float32), jnp.zeros((B,), kseg.dtype))
    xs = (chunks(pq), chunks(lk), chunks(v.astype(jnp.float32)), chunks(qseg), chunks(kseg))
    _, outs = jax.lax.scan(body, init, xs)
    outs = [jnp.moveaxis(x, 0, 1).reshape((B, nc * chunk) + x.shape[3:]) for x in outs]
    return tuple((jnp.flip(x, 1) if reverse else x)[:, :T] for x in outs)


def _global_sums(pq: Array, lk: Array, v: Array, kvalid: Array | None) -> tuple[Array, Array]:
    """Every (valid) key for every query: pq [B, T, N, m], lk [B, S, N, m], v [B, S, N, H], kvalid
    [B, S] bool or None -> num [B, T, N, H], den [B, T, N] (one key stabiliser per batch row and head)."""
    if kvalid is not None:
        lk = jnp.where(kvalid[:, :, None, None], lk, -jnp.inf)
    M = jax.lax.stop_gradient(jnp.max(lk, axis=(1, 3)))  # [B N]
    M = jnp.where(jnp.isfinite(M), M, 0.0)  # a row of padding only
    ek = jnp.exp(lk - M[:, None, :, None])  # [B S N m], 0 for padding
    kv = jnp.einsum("bsnm,bsnh->bnmh", ek, v.astype(jnp.float32))  # [B N m H]
    return jnp.einsum("btnm,bnmh->btnh", pq, kv), jnp.einsum("btnm,bnm->btn", pq, jnp.sum(ek, 1))


def _ratio(num: Array, den: Array) -> Array:
    """num [B, T, N, H] / den [B, T, N]; zeros where no key was visible (den == 0)."""
    return num / jnp.where(den > 0, den, 1.0)[..., None]


@dataclasses.dataclass(frozen=True)
class Performer:
    """FAVOR+ linear attention with `num_features` positive orthogonal random features from `seed`.

    Approximates softmax attention (it converges to it as num_features grows); O(n * num_features * H)
    time and O(n) memory. Causal attention scans chunks of `chunk_size`. Self-attention only when
    causal or with segment ids (T == S); bidirectional without segment ids also serves T != S.
    """

    num_features: int = 256
    seed: int = 0
    chunk_size: int = 64
    decode_window: ClassVar[None] = None
    exact_softmax: ClassVar[bool] = False
    takes_bias: ClassVar[bool] = False
    length_invariant: ClassVar[bool] = True
    decode_fresh: ClassVar[dict[str, float]] = {"performer_num": 0.0, "performer_den": 0.0, "performer_max": NEG}

    def __post_init__(self):
        for name in ("num_features", "chunk_size"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                raise ValueError(f"Performer.{name} must be a positive int; got {val!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"Performer.seed must be an int; got {self.seed!r}")

    def features(self, head_dim: int) -> np.ndarray:
        """The fixed random features W [num_features, head_dim] (float64)."""
        return orthogonal_features(self.num_features, head_dim, self.seed)

    def mask(self, q_len: int, kv_len: int, causal: bool = False) -> np.ndarray:
        """Every key (the kernel approximates full attention), or the causal triangle."""
        return masks.causal_mask(q_len, kv_len) if causal else np.ones((q_len, kv_len), bool)

    def keys_per_query(self, n: int, causal: bool) -> float:
        """The feature maps of q and k and the two feature-space products cost 4 * H * 2m FLOPs per
        query, as many as 2m keys; causal adds the [chunk, chunk] tile, about `chunk_size` keys
        when num_features ~ head_dim. An estimate: it leaves out the O(m) normaliser sums and the
        second scan that packed rows take in bidirectional mode."""
        return 2.0 * self.num_features + (min(self.chunk_size, n) if causal else 0.0)

    def __call__(self, q: Array, k: Array, v: Array, *, causal: bool = False,
                 q_segment_ids: Array | None = None, kv_segment_ids: Array | None = None) -> Array:
        check_qkv(q, k, v, q_segment_ids, kv_segment_ids)
        T, S = q.shape[1], k.shape[1]
        segmented = q_segment_ids is not None or kv_segment_ids is not None
        if (causal or segmented) and T != S:
            raise ValueError(f"Performer with causal=True or segment ids is self-attention: needs query "
                             f"length == key length; got T={T}, S={S}")
        w = self.features(q.shape[-1])
        pq, lk = query_features(feature_logits(q, w)), feature_logits(k, w)  # [B T N m], [B S N m]
        if not causal and not segmented:
            return _ratio(*_global_sums(pq, lk, v, None)).astype(v.dtype)
        ones = jnp.ones(q.shape[:2], jnp.int32)
        qseg = q_segment_ids if q_segment_ids is not None else ones
        kseg = kv_segment_ids if kv_segment_ids is not None else ones
        chunk = min(self.chunk_size, cdiv(T, 8) * 8)
        if causal:
            num, den, _ = _chunk_scan(pq, lk, v, qseg, kseg, chunk, "causal", reverse=False)
            return _ratio(num, den).astype(v.dtype)

        def packed(_):  # forward (earlier chunks + the whole chunk), then the later chunks of each run
            num, den, M = _chunk_scan(pq, lk, v, qseg, kseg, chunk, "all", reverse=False)
            num_b, den_b, M_b = _chunk_scan(pq, lk, v, qseg, kseg, chunk, None, reverse=True)
            top = jnp.maximum(M, M_b)
            a, b = jnp.exp(M - top), jnp.exp(M_b - top)
            return num * a[..., None] + num_b * b[..., None], den * a + den_b * b

        def one_example(_):  # each row is one segment id r plus padding: one global sum over its keys
            num, den = _global_sums(pq, lk, v, kseg != 0)
            sees = (qseg == row_id[:, None]).astype(jnp.float32)[:, :, None]  # [B T 1]
            return num * sees[..., None], den * sees

        # Padding without packing (what an encoder passes) takes the global sum, decided at run time
        # (lax.cond runs one branch); packed rows take the two scans.
        row_id = jnp.max(kseg, axis=1)  # [B]
        unpacked = jnp.all(((qseg == 0) | (qseg == row_id[:, None])) & ((kseg == 0) | (kseg == row_id[:, None])))
        return _ratio(*jax.lax.cond(unpacked, one_example, packed, None)).astype(v.dtype)

    def implied_weights(self, q: Array, k: Array, *, causal: bool = False, q_segment_ids: Array | None = None,
                        kv_segment_ids: Array | None = None) -> Array:
        """The weights this kernel applies, [B, N, T, S] float32 (`attention.weights.ImpliedWeights`):
        A[t, s] = phi(q_t).phi(k_s) / sum_s' phi(q_t).phi(k_s') over the keys query t sees, so that
        `A v` is this spec's output. The random-feature approximation of softmax, not softmax itself.

        The keys a query sees are those of `__call__`: every key, the causal prefix, and with segment
        ids either the row's one example (rows of one id plus padding) or, when any row is packed,
        the contiguous run of the query's id. Materialises [B, N, T, S]: for inspection only.
        """
        check_qkv(q, k, k, q_segment_ids, kv_segment_ids)
        T, S = q.shape[1], k.shape[1]
        w = self.features(q.shape[-1])
        pq, lk = query_features(feature_logits(q, w)), feature_logits(k, w)  # [B T N m], [B S N m]
        see = jnp.asarray(self.mask(T, S, causal))[None]  # [1 T S]
        if q_segment_ids is not None or kv_segment_ids is not None:
            ones = jnp.ones(q.shape[:2], jnp.int32)
            qseg = q_segment_ids if q_segment_ids is not None else ones
            kseg = kv_segment_ids if kv_segment_ids is not None else ones
            row_id = jnp.max(kseg, axis=1)  # [B]
            unpacked = jnp.all(((qseg == 0) | (qseg == row_id[:, None])) & ((kseg == 0) | (kseg == row_id[:, None])))

            def runs(seg):  # [B T] -> the index of each position's contiguous run of one id
                return jnp.cumsum(jnp.concatenate([jnp.zeros_like(seg[:, :1]), seg[:, 1:] != seg[:, :-1]], 1), 1)

            same = jnp.where(unpacked, qseg[:, :, None] == kseg[:, None, :],
                             runs(qseg)[:, :, None] == runs(kseg)[:, None, :])  # [B T S]
            see = see & same & (qseg[:, :, None] != 0) & (kseg[:, None, :] != 0)
        lk = jnp.where(jnp.any(see, axis=1)[:, :, None, None], lk, -jnp.inf)  # keys no query sees
        top = jnp.max(lk, axis=(1, 3), keepdims=True)  # [B 1 N 1]: one constant per (batch, head), cancels
        ek = jnp.exp(lk - jnp.where(jnp.isfinite(top), top, 0.0))  # [B S N m]
        kernel = jnp.einsum("btnm,bsnm->bnts", pq, ek) * see[:, None]  # [B N T S], phi(q).phi(k) up to scale
        total = jnp.sum(kernel, axis=-1, keepdims=True)
        return kernel / jnp.where(total > 0, total, 1.0)

    # ---- recurrent decoding (attention.base.RecurrentDecoding) ----

    def decode_state(self, batch: int, heads: int, head_dim: int) -> dict[str, Array]:
        """Empty running sums: S [B, N, m, H], z [B, N, m] and their log-scale [B, N]."""
        m = self.num_features
        shapes = {"performer_num": (batch, heads, m, head_dim), "performer_den": (batch, heads, m),
                  "performer_max": (batch, heads)}
        return {name: jnp.full(shape, self.decode_fresh[name], jnp.float32) for name, shape in shapes.items()}

    def decode_step(self, state: dict[str, Array], q: Array, k: Array, v: Array
                    ) -> tuple[Array, dict[str, Array]]:
        """q, k, v [B, 1, N, H] at the next position -> out [B, 1, N, H] and the state with this key."""
        w = self.features(q.shape[-1])
        pq, lk = query_features(feature_logits(q, w))[:, 0], feature_logits(k, w)[:, 0]  # [B N m]
        M = state["performer_max"]
        M_new = jnp.maximum(M, jnp.max(lk, -1))  # [B N]
        ek, decay = jnp.exp(lk - M_new[..., None]), jnp.exp(M - M_new)
        S = state["performer_num"] * decay[..., None, None] + ek[..., None] * v[:, 0, :, None, :].astype(jnp.float32)
        z = state["performer_den"] * decay[..., None] + ek
        num = jnp.einsum("bnm,bnmh->bnh", pq, S)
        den = jnp.einsum("bnm,bnm->bn", pq, z)
        out = _ratio(num, den)[:, None].astype(v.dtype)  # [B 1 N H]
        return out, {"performer_num": S, "performer_den": z, "performer_max": M_new}
