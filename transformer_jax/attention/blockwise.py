"""The one blockwise attention kernel behind `Flash`, `Windowed` and `BlockSparse`.

Queries are cut into `nq` blocks of `block_q` rows, keys into `nk` blocks of `block_k`. A static
integer table `[nq, m]` names, for each query block, the key blocks it reads (-1 = none; a row
never names a block twice). The forward pass scans over the `m` table columns, vectorised over all
query blocks, and keeps a running max, normaliser and weighted sum per row (the online softmax of
Milakov & Gimelshein 2018; Rabe & Staats 2021). Inside a tile the exact element mask comes from
absolute positions (causal, optional sliding window) and segment ids, so the block table only has
to over-approximate the pattern. Only the output and the row log-sum-exp are saved; the backward
pass scans again, recomputes each probability tile from the log-sum-exp and accumulates dq in the
carry and dk, dv into their key blocks (FlashAttention-2, Dao 2023, Algorithm 2).

Each table column is fetched in the cheapest way its structure allows, decided once from the
static table: a column that names the same key block for every query block ("shared", the Flash
case) is one dynamic slice; a column that names block `i + offset` for query block `i` ("diagonal",
the sliding-window case) is one contiguous slice of the block axis; anything else (BigBird's random
blocks) is a gather, and its dk, dv a scatter-add. Memory is O(n * block_k * N) per step and the
trace does not grow with n.

Shapes: B batch, T query length, S key length, N heads, H head dim; inside the kernel queries are
laid out [B, nq, N, bq, H] and keys [B, nk, N, bk, H] so every einsum has its batch axes leading.

Every einsum accumulates in float32 whatever the input dtype (`einsum_f32`): scores, softmax and
log-sum-exp stay float32, and bfloat16 tiles feed the matrix units directly on GPU and TPU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from transformer_jax.attention.base import einsum_f32

# Internal column kinds (see module docstring).
_SHARED, _DIAG, _GATHER = "shared", "diag", "gather"
CHUNK_ROWS: int | None = None  # query rows per step of the chunk loop; None: `chunk_rows()` per backend


def chunk_rows() -> int:
    """Query rows per step of the chunk loop. On a CPU, 512: a step's score tiles (rows x heads x
    block_k floats) then stay in cache; windowed fwd+bwd at n = 16384, 8 heads, takes 665 ms instead
    of 826 ms with 4096 rows, block-sparse 1176 ms instead of 1426 ms (2-core CPU,
    benchmarks/results/blockwise_kernel_cpu.json). On accelerators, 4096: enough rows per step to
    fill the device."""
    if CHUNK_ROWS is not None:
        return CHUNK_ROWS
    return 512 if jax.default_backend() == "cpu" else 4096


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass(frozen=True, eq=False)
class _Group:
    """Table columns fetched the same way; `keys` is the block id (shared) or offset (diagonal)."""

    kind: str
    keys: np.ndarray  # [m] int32
    table: np.ndarray  # [m, nq] int32, -1 = no block (transposed: scanned over its leading axis)


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    bq: int
    bk: int
    nq: int  # query blocks, a multiple of `chunk`
    nk: int
    chunk: int  # query blocks processed together: bounds the working set of one step
    q_offset: int  # absolute position of the first query row
    pad_lo: int  # zero key blocks in front, so diagonal slices never start below 0
    pad_hi: int
    causal: bool
    window: int | None
    groups: tuple[_Group, ...]


def _make_plan(table: np.ndarray, bq: int, bk: int, nk: int, q_offset: int, causal: bool,
               window: int | None, chunk: int) -> _Plan:
    table = np.asarray(table, np.int32)
    nq = table.shape[0]
    q_ids = q_offset // bq + np.arange(nq)
    cols: dict[str, tuple[list, list]] = {_SHARED: ([], []), _DIAG: ([], []), _GATHER: ([], [])}
    for c in range(table.shape[1]):
        col = table[:, c]
        valid = col >= 0
        if not valid.any():
            continue
        vals = col[valid]
        offs = vals - q_ids[valid]
        if (vals == vals[0]).all():
            kind, key = _SHARED, vals[0]
        elif bq == bk and (offs == offs[0]).all():
            kind, key = _DIAG, offs[0]
        else:
            kind, key = _GATHER, 0
        cols[kind][0].append(key)
        cols[kind][1].append(col)
    groups = tuple(
        _Group(kind, np.asarray(keys, np.int32), np.stack(tabs).astype(np.int32))
        for kind, (keys, tabs) in cols.items() if keys)
    diag = [g.keys for g in groups if g.kind == _DIAG]
    lo = int(min(k.min() for k in diag)) + int(q_ids[0]) if diag else 0
    hi = int(max(k.max() for k in diag)) + int(q_ids[-1]) + 1 if diag else nk
    return _Plan(bq, bk, nq, nk, chunk, q_offset, max(0, -lo), max(0, hi - nk), causal, window, groups)


def _fetch(plan: _Plan, g: _Group, x, kb, vb, ks, qb0):
    """Key/value tiles and key segment ids for one table column x = (key, column) of the chunk whose
    first query block is qb0 (absolute block id)."""
    key, col = x
    if g.kind == _SHARED:  # one block for everyone: [B, N, bk, H]
        j = key + plan.pad_lo
        return (lax.dynamic_index_in_dim(kb, j, 1, False), lax.dynamic_index_in_dim(vb, j, 1, False),
                lax.dynamic_index_in_dim(ks, j, 1, False)[:, None, None, :])  # ks -> [B, 1, 1, bk]
    if g.kind == _DIAG:  # block i + offset for query block i: a contiguous slice [B, nq, N, bk, H]
        start = key + qb0 + plan.pad_lo
        sl = lambda a: lax.dynamic_slice_in_dim(a, start, plan.chunk, 1)  # noqa: E731
        return sl(kb), sl(vb), sl(ks)[:, :, None, :]
    idx = jnp.maximum(col, 0) + plan.pad_lo  # gather: [B, nq, N, bk, H]
    return (jnp.take(kb, idx, axis=1), jnp.take(vb, idx, axis=1), jnp.take(ks, idx, axis=1)[:, :, None, :])


def _tile_mask(plan: _Plan, g: _Group, x, qs, ks_t, qb0) -> Array:
    """[B, nq, 1, bq, bk] bool: the block is named, the pattern allows (i, j), same non-zero segment."""
    key, col = x
    qpos = qb0 * plan.bq + jnp.arange(plan.chunk * plan.bq, dtype=jnp.int32).reshape(plan.chunk, plan.bq)
    if g.kind == _SHARED:
        kblock = jnp.broadcast_to(key, (plan.chunk,))
    elif g.kind == _DIAG:
        kblock = key + qb0 + jnp.arange(plan.chunk, dtype=jnp.int32)
    else:
        kblock = col
    kpos = kblock[:, None, None] * plan.bk + jnp.arange(plan.bk, dtype=jnp.int32)  # [nq, 1, bk]
    d = qpos[:, :, None] - kpos  # [nq, bq, bk]
    ok = (col >= 0)[:, None, None]
    if plan.causal:
        ok = ok & (d >= 0)
    if plan.window is not None:
        ok = ok & (d <= plan.window) & (d >= (0 if plan.causal else -plan.window))
    seg = (qs[:, :, :, None] == ks_t) & (ks_t != 0)  # [B, nq, bq, bk]
    return (ok[None] & seg)[:, :, None]


def _scores(g: _Group, qb, k_t, scale):
    eq = "bqnth,bnsh->bqnts" if g.kind == _SHARED else "bqnth,bqnsh->bqnts"
    return einsum_f32(eq, qb, k_t) * scale  # [B, nq, N, bq, bk]


def _chunk_tables(plan: _Plan):
    """Each group's table columns per chunk of query blocks: [nc, m, chunk] (indexed by chunk id)."""
    nc = plan.nq // plan.chunk
    return tuple(jnp.asarray(g.table.reshape(len(g.keys), nc, plan.chunk).transpose(1, 0, 2)) for g in plan.groups)


def _over_chunks(plan: _Plan, body, outs, carry=()):
    """Run body(c, slice, carry) -> (chunk outputs, carry) for each chunk c of query blocks.

    `slice(a)` cuts chunk c out of a [B, nq, ...] array. Each chunk's outputs are written in place
    into `outs` (full [B, nq, ...] buffers) by dynamic_update_slice in the loop carry, so neither
    the inputs nor the outputs are ever copied into a chunk-major layout. One chunk: no loop at all.
    """
    nc = plan.nq // plan.chunk

    def step(c, state):
        outs, carry = state
        start = c * plan.chunk
        chunk_outs, carry = body(c, lambda a: lax.dynamic_slice_in_dim(a, start, plan.chunk, 1), carry)
        outs = tuple(lax.dynamic_update_slice_in_dim(o, x.astype(o.dtype), start, 1) for o, x in zip(outs, chunk_outs))
        return outs, carry

    if nc == 1:
        chunk_outs, carry = body(jnp.int32(0), lambda a: a, carry)
        return tuple(x.astype(o.dtype) for o, x in zip(outs, chunk_outs)), carry
    return lax.fori_loop(0, nc, step, (outs, carry))


def _forward(plan: _Plan, qb, kb, vb, qs, ks):
    """Online softmax over the table columns, one chunk of query blocks at a time."""
    B, _, N, bq, H = qb.shape
    scale = 1.0 / np.sqrt(H)
    tables = _chunk_tables(plan)

    def one_chunk(c, sl, carry):
        qb_c, qs_c = sl(qb), sl(qs)
        qb0 = plan.q_offset // plan.bq + c * plan.chunk
        m = jnp.full((B, plan.chunk, N, bq), -jnp.inf, jnp.float32)  # running row max
        l = jnp.zeros((B, plan.chunk, N, bq), jnp.float32)  # running normaliser
        acc = jnp.zeros((B, plan.chunk, N, bq, H), jnp.float32)  # running weighted sum of values
        for g, table in zip(plan.groups, tables):  # at most three scans, one per column kind

            def step(carry, x, g=g):
                m, l, acc = carry
                k_t, v_t, ks_t = _fetch(plan, g, x, kb, vb, ks, qb0)
                s = jnp.where(_tile_mask(plan, g, x, qs_c, ks_t, qb0), _scores(g, qb_c, k_t, scale), -jnp.inf)
                m_new = jnp.maximum(m, s.max(-1))
                m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows that have seen nothing yet
                p = jnp.exp(s - m_safe[..., None])  # [B, chunk, N, bq, bk], 0 where masked
                corr = jnp.exp(m - m_safe)
                eq = "bqnts,bnsh->bqnth" if g.kind == _SHARED else "bqnts,bqnsh->bqnth"
                pv = einsum_f32(eq, p.astype(v_t.dtype), v_t)
                return (m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv), None

            (m, l, acc), _ = lax.scan(step, (m, l, acc), (jnp.asarray(g.keys), table[c]))
        empty = l == 0.0  # rows that see no key output zeros, as `Dense` does
        out = acc / jnp.where(empty, 1.0, l)[..., None]
        lse = jnp.where(empty, 0.0, jnp.where(m == -jnp.inf, 0.0, m) + jnp.log(jnp.where(empty, 1.0, l)))
        return (out, lse), carry

    outs = (jnp.zeros(qb.shape, vb.dtype), jnp.zeros(qb.shape[:-1], jnp.float32))
    (out, lse), _ = _over_chunks(plan, one_chunk, outs)
    return out, lse


def _backward(plan: _Plan, res, do):
    """Recompute each tile from the log-sum-exp; dq per chunk, dk and dv accumulated across chunks."""
    qb, kb, vb, qs, ks, ob, lse = res
    H = qb.shape[-1]
    scale = 1.0 / np.sqrt(H)
    delta = jnp.sum(do.astype(jnp.float32) * ob.astype(jnp.float32), -1)  # [B, nq, N, bq]
    tables = _chunk_tables(plan)

    def one_chunk(c, sl, carry):
        dk, dv = carry
        qb_c, qs_c, do_c, lse_c, delta_c = sl(qb), sl(qs), sl(do), sl(lse), sl(delta)
        qb0 = plan.q_offset // plan.bq + c * plan.chunk
        dq = jnp.zeros(qb_c.shape, jnp.float32)
        for g, table in zip(plan.groups, tables):

            def step(carry, x, g=g):
                dq, dk, dv = carry
                k_t, v_t, ks_t = _fetch(plan, g, x, kb, vb, ks, qb0)
                s = jnp.where(_tile_mask(plan, g, x, qs_c, ks_t, qb0), _scores(g, qb_c, k_t, scale), -jnp.inf)
                p = jnp.exp(s - lse_c[..., None])  # [B, chunk, N, bq, bk], 0 where masked
                shared = g.kind == _SHARED
                kv_out = "bnsh" if shared else "bqnsh"
                dv_t = einsum_f32(f"bqnts,bqnth->{kv_out}", p.astype(do_c.dtype), do_c)
                dp = einsum_f32(f"bqnth,{kv_out}->bqnts", do_c, v_t)
                ds = p * (dp - delta_c[..., None])  # d loss / d scores
                dq = dq + einsum_f32(f"bqnts,{kv_out}->bqnth", ds.astype(k_t.dtype), k_t) * scale
                dk_t = einsum_f32(f"bqnts,bqnth->{kv_out}", ds.astype(qb_c.dtype), qb_c) * scale
                key, col = x
                if shared:
                    j = key + plan.pad_lo
                    dk, dv = dk.at[:, j].add(dk_t), dv.at[:, j].add(dv_t)
                elif g.kind == _DIAG:
                    start = key + qb0 + plan.pad_lo
                    add = lambda a, t: lax.dynamic_update_slice_in_dim(  # noqa: E731
                        a, lax.dynamic_slice_in_dim(a, start, plan.chunk, 1) + t, start, 1)
                    dk, dv = add(dk, dk_t), add(dv, dv_t)
                else:  # missing blocks (-1) carry all-zero tiles, so clamping them to block 0 is harmless
                    idx = jnp.maximum(col, 0) + plan.pad_lo
                    dk, dv = dk.at[:, idx].add(dk_t), dv.at[:, idx].add(dv_t)
                return (dq, dk, dv), None

            (dq, dk, dv), _ = lax.scan(step, (dq, dk, dv), (jnp.asarray(g.keys), table[c]))
        return (dq,), (dk, dv)

    dkv0 = (jnp.zeros(kb.shape, jnp.float32), jnp.zeros(vb.shape, jnp.float32))
    (dq,), (dk, dv) = _over_chunks(plan, one_chunk, (jnp.zeros(qb.shape, qb.dtype),), dkv0)
    return dq, dk.astype(kb.dtype), dv.astype(vb.dtype), None, None


def _core(plan: _Plan):
    """custom_vjp over blocked arrays; padding and layout changes stay outside, for autodiff."""

    @jax.custom_vjp
    def core(qb, kb, vb, qs, ks):
        return _forward(plan, qb, kb, vb, qs, ks)[0]

    def fwd(qb, kb, vb, qs, ks):
        ob, lse = _forward(plan, qb, kb, vb, qs, ks)
        return ob, (qb, kb, vb, qs, ks, ob, lse)

    core.defvjp(fwd, lambda res, do: _backward(plan, res, do))
    return core


def _to_blocks(x: Array, n_blocks: int, block: int, lo: int = 0, hi: int = 0) -> Array:
    """[B, L, ...] -> [B, lo + n_blocks + hi, block, ...], zero padded (segment id 0 = padding)."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (lo * block, (n_blocks + hi) * block - x.shape[1])
    x = jnp.pad(x, pad)
    return x.reshape(x.shape[0], lo + n_blocks + hi, block, *x.shape[2:])


def blockwise_attention(q: Array, k: Array, v: Array, table: np.ndarray, *, block_q: int, block_k: int,
                        q_offset: int = 0, causal: bool = False, window: int | None = None,
                        q_segment_ids: Array | None = None, kv_segment_ids: Array | None = None) -> Array:
    """Attention of q [B, T, N, H] over k, v [B, S, N, H] restricted to the key blocks in `table`.

    table: static int [ceil(T / block_q), m], key block ids per query block, -1 = none.
    q_offset: absolute position of q[:, 0] (a multiple of block_q), for causal, window and the
      diagonal column test when q is a slice of a longer sequence.
    causal: j <= i elementwise; window: |i - j| <= window (0 <= i - j <= window if causal).
    Returns [B, T, N, H] in v.dtype; rows that see no key are zeros.
    """
    B, T, N, H = q.shape
    S = k.shape[1]
    nq, nk = cdiv(T, block_q), cdiv(S, block_k)
    if table.shape[0] != nq:
        raise ValueError(f"table must have one row per query block ({nq}); got shape {table.shape}")
    # Query blocks go through in chunks of about `chunk_rows()` rows: every step then touches a
    # bounded working set that stays in cache, and time stays linear in n on CPUs as well.
    chunk = min(nq, max(1, chunk_rows() // block_q))
    nq_pad = cdiv(nq, chunk) * chunk
    table = np.concatenate([table, np.full((nq_pad - nq, table.shape[1]), -1, table.dtype)])
    plan = _make_plan(table, block_q, block_k, nk, q_offset, causal, window, chunk)
    qs = jnp.ones((B, T), jnp.int32) if q_segment_ids is None else q_segment_ids.astype(jnp.int32)
    ks = jnp.ones((B, S), jnp.int32) if kv_segment_ids is None else kv_segment_ids.astype(jnp.int32)
    lo, hi = plan.pad_lo, plan.pad_hi
    qb = _to_blocks(q, nq_pad, block_q).transpose(0, 1, 3, 2, 4)  # [B, nq_pad, N, bq, H]
    kb = _to_blocks(k, nk, block_k, lo, hi).transpose(0, 1, 3, 2, 4)  # [B, lo+nk+hi, N, bk, H]
    vb = _to_blocks(v, nk, block_k, lo, hi).transpose(0, 1, 3, 2, 4)
    ob = _core(plan)(qb, kb, vb, _to_blocks(qs, nq_pad, block_q), _to_blocks(ks, nk, block_k, lo, hi))
    return ob.transpose(0, 1, 3, 2, 4).reshape(B, nq_pad * block_q, N, H)[:, :T]  # [B, T, N, H]
