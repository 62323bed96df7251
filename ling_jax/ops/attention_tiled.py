"""Tiled (flash) GQA attention: online softmax over key blocks, custom VJP, memory linear in T.

Forward: for each query block, a loop over the key blocks it can see (causal: blocks wholly
in the future are skipped) keeps the running row max m, normaliser l and fp32 accumulator;
saves q, k, v, the fp32 output and the row log-sum-exp. Backward: for each key block, a loop over
the query blocks that can see it recomputes P = exp(S - lse) and accumulates dV = Pᵀ·dO,
dK = dSᵀ·Q and (into an fp32 [T] buffer) dQ = dS·K with dS = P·(dP - rowsum(dO∘O)). The largest
temporary is one [B,K,block_q,G,block_kv] fp32 score block. Masked scores take the same finite
value as attention_core (the reference), so visible rows agree to fp32 rounding. Dots take
compute-dtype operands with preferred_element_type fp32 (attention_core's CPU notes).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ling_jax.ops.attention_mask import AttentionMask, visible

_NEG = float(jnp.finfo(jnp.float32).min)
_PAD_Q, _PAD_KV = -1, int(jnp.iinfo(jnp.int32).min)  # segment ids of padding rows: never match


def _dot(a, b, contract, batch):
    return jax.lax.dot_general(a, b, (contract, batch), preferred_element_type=jnp.float32)


def _pad(a: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, widths, constant_values=value)


def _slice(a: jax.Array, start, size: int, axis: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(a, start, size, axis=axis)


def _block_scores(mask, q_i, k_j, qseg_i, kseg_j, i, j, bq, bkv):
    """Masked fp32 scores [B,K,bq,G,bkv] of query block i against key block j."""
    s = _dot(q_i, k_j, ((4,), (3,)), ((0, 2), (0, 2))) / math.sqrt(q_i.shape[-1])
    see = visible(mask, i * bq + jnp.arange(bq), j * bkv + jnp.arange(bkv), qseg_i, kseg_j)
    return jnp.where(see[:, None, :, None, :], s, _NEG)


def _padded(q, k, v, mask, bq, bkv):
    nq, nk = -(-q.shape[1] // bq), -(-k.shape[1] // bkv)
    return (_pad(q, 1, nq * bq), _pad(k, 1, nk * bkv), _pad(v, 1, nk * bkv),
            _pad(mask.q_segment_BT, 1, nq * bq, _PAD_Q),
            _pad(mask.kv_segment_BS, 1, nk * bkv, _PAD_KV), nq, nk)


def _forward(q, k, v, mask, bq, bkv):
    """(out fp32 [B,K,Tp,G,H], lse [B,K,Tp,G]) over the padded query length Tp."""
    qp, kp, vp, qseg, kseg, nq, nk = _padded(q, k, v, mask, bq, bkv)
    batch, _, num_kv, groups, head_dim = q.shape

    def query_block(i, carry):
        out, lse = carry
        q_i, qseg_i = _slice(qp, i * bq, bq, 1), _slice(qseg, i * bq, bq, 1)

        def key_block(j, state):
            m, norm, acc = state
            s = _block_scores(mask, q_i, _slice(kp, j * bkv, bkv, 1), qseg_i,
                              _slice(kseg, j * bkv, bkv, 1), i, j, bq, bkv)
            m_new = jnp.maximum(m, s.max(-1))
            correction = jnp.exp(m - m_new)
            p = jnp.exp(s - m_new[..., None])
            pv = _dot(p.astype(v.dtype), _slice(vp, j * bkv, bkv, 1), ((4,), (1,)), ((0, 1), (0, 2)))
            return m_new, norm * correction + p.sum(-1), acc * correction[..., None] + pv

        shape = (batch, num_kv, bq, groups)
        init = (jnp.full(shape, _NEG), jnp.zeros(shape), jnp.zeros((*shape, head_dim)))
        last = jnp.minimum(nk, (mask.offset + (i + 1) * bq - 1) // bkv + 1)  # causal skip
        m, norm, acc = jax.lax.fori_loop(0, last, key_block, init)
        out = jax.lax.dynamic_update_slice_in_dim(out, acc / norm[..., None], i * bq, axis=2)
        return out, jax.lax.dynamic_update_slice_in_dim(lse, m + jnp.log(norm), i * bq, axis=2)

    out = jnp.zeros((batch, num_kv, nq * bq, groups, head_dim), jnp.float32)
    lse = jnp.zeros((batch, num_kv, nq * bq, groups), jnp.float32)
    return jax.lax.fori_loop(0, nq, query_block, (out, lse))


def partial_forward(q, k, v, mask, bq, bkv):
    """(out fp32 [B,K,T,G,H], lse [B,K,T,G]) of q [B,T,K,G,H] over these keys only: ring
    attention merges such partial results by their log-sum-exps."""
    out, lse = _forward(q, k, v, mask, bq, bkv)
    return out[:, :, : q.shape[1]], lse[:, :, : q.shape[1]]


def _to_btkgh(out_BKTGH):
    return out_BKTGH.transpose(0, 2, 1, 3, 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend(q, k, v, mask, bq, bkv):
    return _to_btkgh(partial_forward(q, k, v, mask, bq, bkv)[0]).astype(v.dtype)


def _attend_fwd(q, k, v, mask, bq, bkv):
    out, lse = partial_forward(q, k, v, mask, bq, bkv)
    return _to_btkgh(out).astype(v.dtype), (q, k, v, mask, out, lse)


def partial_backward(q, k, v, mask, out, lse, d_out, bq, bkv):
    """fp32 (dq [B,T,K,G,H], dk, dv [B,S,K,H]) of these keys' share of attention, given the
    output and lse over ALL keys (out [B,K,T,G,H], lse [B,K,T,G]) and d_out [B,T,K,G,H]: with the
    full row's lse, P = exp(S - lse) is this block's slice of the full softmax."""
    qp, kp, vp, qseg, kseg, nq, nk = _padded(q, k, v, mask, bq, bkv)
    out, lse = _pad(out, 2, nq * bq), _pad(lse, 2, nq * bq)
    scale = 1 / math.sqrt(q.shape[-1])
    d_out = _pad(d_out.astype(v.dtype), 1, nq * bq)  # [B,Tp,K,G,H]
    delta = jnp.einsum("btkgh,bktgh->bktg", d_out.astype(jnp.float32), out)  # rowsum(dO∘O)

    def key_block(j, carry):
        dq, dk, dv = carry
        k_j, v_j, kseg_j = (_slice(a, j * bkv, bkv, 1) for a in (kp, vp, kseg))

        def query_block(i, state):
            dq, dk_j, dv_j = state
            q_i, do_i, qseg_i = (_slice(a, i * bq, bq, 1) for a in (qp, d_out, qseg))
            lse_i, delta_i = (_slice(a, i * bq, bq, 2) for a in (lse, delta))
            p = jnp.exp(_block_scores(mask, q_i, k_j, qseg_i, kseg_j, i, j, bq, bkv)
                        - lse_i[..., None])
            dp = _dot(do_i, v_j, ((4,), (3,)), ((0, 2), (0, 2)))  # [B,K,bq,G,bkv]
            ds = (p * (dp - delta_i[..., None]) * scale).astype(q.dtype)
            dv_j = dv_j + _dot(p.astype(v.dtype), do_i, ((2, 3), (1, 3)), ((0, 1), (0, 2)))
            dk_j = dk_j + _dot(ds, q_i, ((2, 3), (1, 3)), ((0, 1), (0, 2)))
            dq_i = _slice(dq, i * bq, bq, 2) + _dot(ds, k_j, ((4,), (1,)), ((0, 1), (0, 2)))
            return jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=2), dk_j, dv_j

        first = jnp.clip((j * bkv - mask.offset) // bq, 0, nq)  # earlier query blocks can't see j
        zeros = jnp.zeros((q.shape[0], q.shape[2], bkv, q.shape[4]), jnp.float32)
        dq, dk_j, dv_j = jax.lax.fori_loop(first, nq, query_block, (dq, zeros, zeros))
        dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_j, j * bkv, axis=2)
        return dq, dk, jax.lax.dynamic_update_slice_in_dim(dv, dv_j, j * bkv, axis=2)

    dq = jnp.zeros(out.shape, jnp.float32)  # [B,K,Tp,G,H]
    dkv = jnp.zeros((q.shape[0], q.shape[2], nk * bkv, q.shape[4]), jnp.float32)
    dq, dk, dv = jax.lax.fori_loop(0, nk, key_block, (dq, dkv, dkv))
    keys = k.shape[1]
    dk, dv = (a[:, :, :keys].transpose(0, 2, 1, 3) for a in (dk, dv))
    return _to_btkgh(dq[:, :, : q.shape[1]]), dk, dv


def _attend_bwd(bq, bkv, residuals, d_out):
    q, k, v, mask, out, lse = residuals
    dq, dk, dv = partial_backward(q, k, v, mask, out, lse, d_out, bq, bkv)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attend.defvjp(_attend_fwd, _attend_bwd)


@functools.partial(jax.named_call, name="attention_tiled")
def tiled_attention(q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask, *, block_q: int = 512,
                    block_kv: int = 512) -> jax.Array:
    """softmax(QKᵀ/√H masked) V → [B,T,N,H] in v's dtype, one [block_q × block_kv] tile at a time."""
    batch, length, num_heads, head_dim = q_BTNH.shape
    num_kv, dtype = k_BSKH.shape[2], v_BSKH.dtype
    q = q_BTNH.astype(dtype).reshape(batch, length, num_kv, num_heads // num_kv, head_dim)
    bq, bkv = min(block_q, length), min(block_kv, k_BSKH.shape[1])
    out = _attend(q, k_BSKH.astype(dtype), v_BSKH.astype(dtype), mask, bq, bkv)
    return out.reshape(batch, length, num_heads, head_dim)
