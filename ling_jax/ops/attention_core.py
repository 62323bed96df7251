"""Masked GQA softmax attention with a hand-written (flash-style, untiled) backward.

Autodiff of softmax(QK^T)V keeps the fp32 probabilities [B,K,G,T,S] of every layer as residuals
(stacked over scanned layers) plus the masked scores. Here the forward saves only q, k, v and the
row log-sum-exp; the backward recomputes the probabilities and uses dS = P * (dP - rowsum(P * dP)).
Matmuls take compute-dtype operands with fp32 accumulation; the softmax runs in fp32. Query head n
uses KV head n // (N/K).

Layouts are chosen for XLA:CPU, whose bf16 matmul path (YNNPACK) takes a dot only when its operands
are row-major with the contraction last on the left: a dot fed by a transposed intermediate, or
whose left operand contracts a leading dimension (Pᵀ·dO), is silently run in fp32 at under half the
speed. So q, k, v and dO stay in their [B,T,K,G,H] / [B,S,K,H] layouts (the dots name their batch
dimensions, XLA inserts the physical copies), and the backward computes the transposed scores
K·Qᵀ itself (one extra QKᵀ and dO·Vᵀ) instead of transposing P and dS for dV and dK.
Measured on one bench-mini layer (4 × 512 tokens, 8 heads, 2 KV heads, bf16, 2-core CPU):
forward + backward 75 → 64 ms with every dot bf16 (was fp32 throughout), → 50-55 ms with
the transposed scores' T and G axes merged.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_NEG = float(jnp.finfo(jnp.float32).min)


def _dot(a: jax.Array, b: jax.Array, contract: tuple, batch: tuple) -> jax.Array:
    return jax.lax.dot_general(a, b, (contract, batch), preferred_element_type=jnp.float32)


def _scores(q, k, mask):
    """Masked fp32 scores [B,K,T,G,S] from q [B,T,K,G,H], k [B,S,K,H], mask [B,1,T,S]."""
    s = _dot(q, k, ((4,), (3,)), ((0, 2), (0, 2))) / math.sqrt(q.shape[-1])
    return jnp.where(mask[:, :, :, None, :], s, _NEG)


def _scores_t(q, k, mask):
    """The same scores transposed, [B,K,S,T·G], computed as K·Qᵀ. T and G are merged so that the
    softmax arithmetic runs along a long minor axis (G alone is 4 wide on bench-mini: 7× slower)."""
    batch, length, num_kv, groups, head_dim = q.shape
    s_t = _dot(k, q, ((3,), (4,)), ((0, 2), (0, 2))) / math.sqrt(head_dim)
    mask_t = jnp.repeat(jnp.swapaxes(mask, 2, 3), groups, axis=-1)  # [B,1,S,T·G]
    return jnp.where(mask_t, s_t.reshape(batch, num_kv, -1, length * groups), _NEG)


def _forward(q, k, v, mask):
    s = _scores(q, k, mask)
    lse = jax.nn.logsumexp(s, axis=-1)  # [B,K,T,G]
    p = jnp.exp(s - lse[..., None]).astype(v.dtype)
    out = _dot(p, v, ((4,), (1,)), ((0, 1), (0, 2)))  # [B,K,T,G,H]
    return out.astype(v.dtype).transpose(0, 2, 1, 3, 4), lse


@jax.custom_vjp
def _attend(q, k, v, mask):
    return _forward(q, k, v, mask)[0]


def _attend_fwd(q, k, v, mask):
    out, lse = _forward(q, k, v, mask)
    return out, (q, k, v, mask, lse)


def _attend_bwd(residuals, d_out):
    q, k, v, mask, lse = residuals
    batch, length, num_kv, groups, _ = q.shape
    scale = 1 / math.sqrt(q.shape[-1])
    d_out = d_out.astype(v.dtype)  # [B,T,K,G,H]
    unmerge = lambda a: a.reshape(batch, num_kv, -1, length, groups)  # [B,K,S,T·G] -> 5-D
    p = jnp.exp(_scores(q, k, mask) - lse[..., None])
    lse_t = lse.reshape(batch, num_kv, 1, length * groups)
    p_t = jnp.exp(_scores_t(q, k, mask) - lse_t)
    dv = _dot(unmerge(p_t.astype(v.dtype)), d_out, ((3, 4), (1, 3)), ((0, 1), (0, 2)))
    dp = _dot(d_out, v, ((4,), (3,)), ((0, 2), (0, 2)))
    dp_t = _dot(v, d_out, ((3,), (4,)), ((0, 2), (0, 2))).reshape(p_t.shape)
    # Σ_s p·dp in fp32 (flash attention uses rowsum(dO∘O), which carries O's bf16 rounding into
    # the cancellation dp - delta; this pass is cheap on CPU and exact where one key is visible).
    delta = jnp.sum(p * dp, axis=-1)
    ds = (p * (dp - delta[..., None]) * scale).astype(q.dtype)
    ds_t = (p_t * (dp_t - delta.reshape(lse_t.shape)) * scale).astype(q.dtype)
    dq = _dot(ds, k, ((4,), (1,)), ((0, 1), (0, 2))).transpose(0, 2, 1, 3, 4)
    dk = _dot(unmerge(ds_t), q, ((3, 4), (1, 3)), ((0, 1), (0, 2)))  # [B,K,S,H]
    return (dq.astype(q.dtype), dk.transpose(0, 2, 1, 3).astype(k.dtype),
            dv.transpose(0, 2, 1, 3).astype(v.dtype), None)


_attend.defvjp(_attend_fwd, _attend_bwd)


@functools.partial(jax.named_call, name="attention")
def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS) -> jax.Array:
    """softmax(QK^T / sqrt(H) masked) V → [B,T,N,H] in v's dtype; mask [B,1,T,S] bool."""
    batch, length, num_heads, head_dim = q_BTNH.shape
    num_kv, dtype = k_BSKH.shape[2], v_BSKH.dtype
    q = q_BTNH.astype(dtype).reshape(batch, length, num_kv, num_heads // num_kv, head_dim)
    out = _attend(q, k_BSKH.astype(dtype), v_BSKH.astype(dtype), mask_B1TS)
    return out.reshape(batch, length, num_heads, head_dim)
