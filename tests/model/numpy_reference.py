"""An independent float64 NumPy forward of BailingMoeV2 written from reference §2 (tests only).

It reads HF tensors directly (HF key names and layouts), so it shares no code with ling_jax.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps))


def silu(x):
    return x / (1 + np.exp(-x))


def rope(x, pos, rot, theta):
    """Rotate-half RoPE on the first `rot` dims of x [T, N, D]."""
    # HF builds inv_freq, angles and cos/sin in float32 even for a float64 model; so do we.
    inv = 1.0 / np.float32(theta) ** (np.arange(0, rot, 2).astype(np.float32) / np.float32(rot))
    ang = pos.astype(np.float32)[:, None] * inv.astype(np.float32)[None]
    emb = np.concatenate([ang, ang], -1)
    cos, sin = np.cos(emb).astype(np.float64), np.sin(emb).astype(np.float64)
    xr, xp = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = np.concatenate([-xr[..., half:], xr[..., :half]], -1)
    return np.concatenate([xr * cos[:, None] + rotated * sin[:, None], xp], -1)


def attention(W, p, x, c):
    n, k, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    t = x.shape[0]
    qkv = (x @ W[p + "attention.query_key_value.weight"].T).reshape(t, n + 2 * k, d)
    q, kk, v = qkv[:, :n], qkv[:, n : n + k], qkv[:, n + k :]
    eps = c["rms_norm_eps"]
    q = rms_norm(q, W[p + "attention.query_layernorm.weight"], eps)
    kk = rms_norm(kk, W[p + "attention.key_layernorm.weight"], eps)
    rot = int(d * c["partial_rotary_factor"])
    pos = np.arange(t, dtype=np.float64)
    q, kk = rope(q, pos, rot, c["rope_theta"]), rope(kk, pos, rot, c["rope_theta"])
    rep = n // k
    kk, v = np.repeat(kk, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("tnd,snd->nts", q, kk) / np.sqrt(d)
    s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = np.einsum("nts,snd->tnd", s, v).reshape(t, n * d)
    return o @ W[p + "attention.dense.weight"].T


def swiglu(W, p, x):
    return (silu(x @ W[p + "gate_proj.weight"].T) * (x @ W[p + "up_proj.weight"].T)) @ W[
        p + "down_proj.weight"
    ].T


def route(logits, bias, c):
    """Chosen experts [T, K] and weights; ties impossible on random data."""
    scores = (1 / (1 + np.exp(-logits))).astype(logits.dtype)
    sel = scores + bias
    t, e = sel.shape
    g = c["n_group"]
    grouped = np.sort(sel.reshape(t, g, e // g), -1)[..., -2:].sum(-1)
    keep = np.argsort(-grouped, -1)[:, : c["topk_group"]]
    mask = np.zeros((t, g), bool)
    np.put_along_axis(mask, keep, True, -1)
    sel = np.where(np.repeat(mask, e // g, 1), sel, -np.inf)
    idx = np.argsort(-sel, -1)[:, : c["num_experts_per_tok"]]
    w = np.take_along_axis(scores, idx, -1)
    w = (
        w
        / (w.sum(-1, keepdims=True) + np.asarray(1e-20, w.dtype))
        * np.asarray(c["routed_scaling_factor"], w.dtype)
    )
    return idx, w


def moe(W, p, x, c, routing_log):
    # The router runs in float32 even in a float64 model (router_dtype fp32, reference §2.7).
    logits = x.astype(np.float32) @ W[p + "gate.weight"].astype(np.float32).T
    idx, w = route(logits, W[p + "gate.expert_bias"].astype(np.float32), c)
    w = w.astype(np.float64)
    routing_log.append(idx)
    out = np.zeros_like(x)
    for tok in range(x.shape[0]):
        for slot in range(idx.shape[1]):
            out[tok] += (
                w[tok, slot] * swiglu(W, f"{p}experts.{idx[tok, slot]}.", x[tok : tok + 1])[0]
            )
    return out + swiglu(W, p + "shared_experts.", x)


def layer(W, i, x, c, routing_log):
    p = f"model.layers.{i}."
    eps = c["rms_norm_eps"]
    x = x + attention(W, p, rms_norm(x, W[p + "input_layernorm.weight"], eps), c)
    h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
    if i < c["first_k_dense_replace"]:
        return x + swiglu(W, p + "mlp.", h)
    return x + moe(W, p + "mlp.", h, c, routing_log)


def forward(W, ids, c):
    """(logits [T,V], mtp_logits [n_mtp,T,V], routing: list of [T,K] per MoE layer incl. MTP)."""
    W = {k: np.asarray(v, np.float64) for k, v in W.items()}
    emb = W["model.word_embeddings.weight"]
    eps = c["rms_norm_eps"]
    routing: list = []
    x = emb[ids]
    for i in range(c["num_hidden_layers"]):
        x = layer(W, i, x, c, routing)
    h = rms_norm(x, W["model.norm.weight"], eps)
    logits = h @ W["lm_head.weight"].T
    mtp, cur = [], ids
    for j in range(c.get("num_nextn_predict_layers", 0)):
        p = f"model.layers.{c['num_hidden_layers'] + j}."
        cur = np.concatenate([cur[1:], [0]])
        u = (
            np.concatenate(
                [
                    rms_norm(emb[cur], W[p + "enorm.weight"], eps),
                    rms_norm(h, W[p + "hnorm.weight"], eps),
                ],
                -1,
            )
            @ W[p + "eh_proj.weight"].T
        )
        u = layer(W, c["num_hidden_layers"] + j, u, dict(c, first_k_dense_replace=0), routing)
        h = rms_norm(u, W[p + "final_layernorm.weight"], eps)
        mtp.append(h @ W["lm_head.weight"].T)
    return logits, np.stack(mtp) if mtp else np.zeros((0, *logits.shape)), routing
