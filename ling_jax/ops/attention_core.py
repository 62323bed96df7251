"""Masked GQA softmax attention with a hand-written (flash-style, untiled) backward.

Autodiff of softmax(QK^T)V keeps the fp32 probabilities [B,K,G,T,S] of every layer as residuals
(stacked over scanned layers) plus the masked scores. Here the forward saves only q, k, v and the
row log-sum-exp; the backward recomputes the probabilities (one more QK^T) and uses
dS = P * (dP - rowsum(P * dP)). Matmuls take compute-dtype operands with fp32 accumulation; the
softmax runs in fp32. Query head n uses KV head n // (N/K).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_NEG = float(jnp.finfo(jnp.float32).min)


def _mm(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def _scores(q, k, mask):
    """Masked fp32 scores [B,K,M,S]: queries q [B,K,M,H] (M = G*T, g-major), keys k [B,K,S,H]."""
    batch, num_kv, rows, _ = q.shape
    s = _mm("bkmh,bksh->bkms", q, k) / math.sqrt(q.shape[-1])
    s = jnp.where(mask[:, :, None], s.reshape(batch, num_kv, -1, mask.shape[2], mask.shape[3]), _NEG)
    return s.reshape(batch, num_kv, rows, -1)


def _forward(q, k, v, mask):
    s = _scores(q, k, mask)
    lse = jax.nn.logsumexp(s, axis=-1)
    p = jnp.exp(s - lse[..., None]).astype(v.dtype)
    return _mm("bkms,bksh->bkmh", p, v).astype(v.dtype), lse


@jax.custom_vjp
def _attend(q, k, v, mask):
    return _forward(q, k, v, mask)[0]


def _attend_fwd(q, k, v, mask):
    out, lse = _forward(q, k, v, mask)
    return out, (q, k, v, mask, lse)


def _attend_bwd(residuals, d_out):
    q, k, v, mask, lse = residuals
    p = jnp.exp(_scores(q, k, mask) - lse[..., None])
    d_out = d_out.astype(v.dtype)
    dv = _mm("bkms,bkmh->bksh", p.astype(v.dtype), d_out)
    dp = _mm("bkmh,bksh->bkms", d_out, v)
    # Σ_s p·dp in fp32 (flash attention uses rowsum(dO∘O), which carries O's bf16 rounding into
    # the cancellation dp - delta; this pass is cheap on CPU and exact where one key is visible).
    delta = jnp.sum(p * dp, axis=-1)
    ds = (p * (dp - delta[..., None]) / math.sqrt(q.shape[-1])).astype(q.dtype)
    dq = _mm("bkms,bksh->bkmh", ds, k)
    dk = _mm("bkms,bkmh->bksh", ds, q)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attend.defvjp(_attend_fwd, _attend_bwd)


@functools.partial(jax.named_call, name="attention")
def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS) -> jax.Array:
    """softmax(QK^T / sqrt(H) masked) V → [B,T,N,H] in v's dtype; mask [B,1,T,S] bool."""
    batch, length, num_heads, head_dim = q_BTNH.shape
    num_kv, dtype = k_BSKH.shape[2], v_BSKH.dtype
    # Head-major layouts make every matmul a plain batched one over (b, k).
    q = q_BTNH.astype(dtype).reshape(batch, length, num_kv, num_heads // num_kv, head_dim)
    q = q.transpose(0, 2, 3, 1, 4).reshape(batch, num_kv, -1, head_dim)
    k, v = (a.astype(dtype).transpose(0, 2, 1, 3) for a in (k_BSKH, v_BSKH))
    out = _attend(q, k, v, mask_B1TS)
    out = out.reshape(batch, num_kv, num_heads // num_kv, length, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, length, num_heads, head_dim)
