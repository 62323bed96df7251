"""Ring K/V exchange for context parallelism: K/V blocks go round the context axis by collective
permute instead of being all-gathered, so each device holds one block of K/V at a time.

Shard j holds zig-zag chunks (j, 2C-1-j) of queries and keys (attention_context.py). At ring step
s it holds the K/V of shard i = (j - s) mod C and sends them on to j+1 before attending to them, so
the transfer overlaps the compute. Step 0 (its own block) is causal in local order; for i < j every
local query sees all of chunk i and none of chunk 2C-1-i; for i > j only chunk 2C-1-j sees them,
all of them. So every step after the first costs every shard two chunk pairs (load-balanced).
Partial results (output, row log-sum-exp) merge as in online softmax. The custom VJP keeps only
the local q/k/v, output and lse; its backward runs the ring again, each block's dK/dV travelling
with it and arriving home after C hops (Liu et al. 2023, Ring Attention). Block kernels are
attention_tiled's partial forward/backward: masked rows of a partial carry lse ≈ -3.4e38, so they
weigh nothing in the merge, and every query sees itself at step 0.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ling_jax.ops.attention_mask import AttentionMask
from ling_jax.ops.attention_tiled import partial_backward, partial_forward

_NEG = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class Ring:
    """Static settings of one ring: mesh axis, its size, tile sizes."""

    axis: str
    shards: int
    bq: int
    bkv: int


def _send(tree, ring: Ring):
    """Every shard's arrays to the next shard on the ring (one collective permute)."""
    pairs = [(j, (j + 1) % ring.shards) for j in range(ring.shards)]
    return jax.tree.map(lambda a: jax.lax.ppermute(a, ring.axis, pairs), tree)


def _pad_front(a: jax.Array, axis: int, size: int, value: float = 0.0) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (size - a.shape[axis], 0)
    return jnp.pad(a, widths, constant_values=value)


def _pad_back(a: jax.Array, axis: int, size: int) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, widths)


def _step_forward(q, qseg, held, step: int, me, ring: Ring):
    """(out [B,K,2c,G,H], lse [B,K,2c,G]) of the local queries over the held K/V block."""
    k, v, kseg = held
    c, bq, bkv = q.shape[1] // 2, ring.bq, ring.bkv
    if step == 0:  # own block: causal in local (zig-zag) order, which keeps natural order here
        return partial_forward(q, k, v, AttentionMask(qseg, kseg, 0), bq, bkv)

    def earlier():  # i < me: all local queries see all of the block's first chunk
        return partial_forward(q, k[:, :c], v[:, :c], AttentionMask(qseg, kseg[:, :c], c), bq, bkv)

    def later():  # i > me: only the second query chunk sees the block, all of it
        out, lse = partial_forward(q[:, c:], k, v, AttentionMask(qseg[:, c:], kseg, 2 * c), bq, bkv)
        return _pad_front(out, 2, 2 * c), _pad_front(lse, 2, 2 * c, _NEG)

    return jax.lax.cond(step <= me, earlier, later)


def _merge(acc, part):
    """Online-softmax merge of two partial (out, lse) over disjoint key sets."""
    (out_a, lse_a), (out_b, lse_b) = acc, part
    lse = jnp.logaddexp(lse_a, lse_b)
    weight = lambda x: jnp.exp(x - lse)[..., None]
    return out_a * weight(lse_a) + out_b * weight(lse_b), lse


def _forward(q, k, v, qseg, kseg, ring: Ring):
    me = jax.lax.axis_index(ring.axis)
    held, acc = (k, v, kseg), None
    for step in range(ring.shards):
        nxt = _send(held, ring) if step < ring.shards - 1 else None  # in flight during compute
        part = _step_forward(q, qseg, held, step, me, ring)
        acc = part if acc is None else _merge(acc, part)
        held = nxt
    return acc


def _step_backward(q, qseg, held, out, lse, d_out, step: int, me, ring: Ring):
    """fp32 (dq [B,2c,K,G,H], dk, dv [B,2c,K,H]) of the held block's share of attention."""
    k, v, kseg = held
    c, bq, bkv = q.shape[1] // 2, ring.bq, ring.bkv
    if step == 0:
        return partial_backward(q, k, v, AttentionMask(qseg, kseg, 0), out, lse, d_out, bq, bkv)

    def earlier():
        dq, dk, dv = partial_backward(q, k[:, :c], v[:, :c], AttentionMask(qseg, kseg[:, :c], c),
                                      out, lse, d_out, bq, bkv)
        return dq, _pad_back(dk, 1, 2 * c), _pad_back(dv, 1, 2 * c)

    def later():
        dq, dk, dv = partial_backward(q[:, c:], k, v, AttentionMask(qseg[:, c:], kseg, 2 * c),
                                      out[:, :, c:], lse[:, :, c:], d_out[:, c:], bq, bkv)
        return _pad_front(dq, 1, 2 * c), dk, dv

    return jax.lax.cond(step <= me, earlier, later)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _ring(q, k, v, qseg, kseg, ring: Ring):
    return _ring_fwd(q, k, v, qseg, kseg, ring)[0]


def _ring_fwd(q, k, v, qseg, kseg, ring: Ring):
    out, lse = _forward(q, k, v, qseg, kseg, ring)
    return out.transpose(0, 2, 1, 3, 4).astype(v.dtype), (q, k, v, qseg, kseg, out, lse)


def _ring_bwd(ring: Ring, residuals, d_out):
    q, k, v, qseg, kseg, out, lse = residuals
    me = jax.lax.axis_index(ring.axis)
    held = (k, v, kseg)
    dq = jnp.zeros(q.shape, jnp.float32)
    dkv = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    for step in range(ring.shards):
        nxt = _send(held, ring) if step < ring.shards - 1 else None
        dq_s, dk_s, dv_s = _step_backward(q, qseg, held, out, lse, d_out, step, me, ring)
        dq = dq + dq_s
        dkv = _send((dkv[0] + dk_s, dkv[1] + dv_s), ring)  # follows its block; home after C hops
        held = nxt
    return dq.astype(q.dtype), dkv[0].astype(k.dtype), dkv[1].astype(v.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_local_attention(q, k, v, qseg, kseg, *, axis: str, shards: int, block_q: int,
                         block_kv: int):
    """Per-device body inside shard_map: local zig-zag q [B,2c,N,H], k/v [B,2c,K,H] → [B,2c,N,H]."""
    batch, length, num_heads, head_dim = q.shape
    num_kv, c = k.shape[2], length // 2
    ring = Ring(axis, shards, min(block_q, c), min(block_kv, c))
    q = q.astype(v.dtype).reshape(batch, length, num_kv, num_heads // num_kv, head_dim)
    out = _ring(q, k.astype(v.dtype), v, qseg, kseg, ring)
    return out.reshape(batch, length, num_heads, head_dim)
