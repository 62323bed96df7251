"""Float64 cross-check: the exported checkpoint, read with torch + safetensors into a compact
float64 PyTorch forward written from the documented semantics (reference §2), reproduces the
fixture's logits to 1e-5. The user's path (the exported transformers module, one-line loads,
generate) is tested in test_torch_export.py; this test checks the weights alone."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.interop.hf_files import read_tensors


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def swiglu(x, W, prefix):
    gate, up = x @ W[f"{prefix}.gate_proj.weight"].T, x @ W[f"{prefix}.up_proj.weight"].T
    return (F.silu(gate) * up) @ W[f"{prefix}.down_proj.weight"].T


def rotate(x, positions, c):
    """Rotate-half RoPE on the first head_dim * partial_rotary_factor dims; the rest pass."""
    r = int(c["head_dim"] * c["partial_rotary_factor"])
    inv_freq = c["rope_theta"] ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    angles = positions[:, None].double() * inv_freq[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rot, rest = x[..., :r], x[..., r:]
    half = torch.cat([-rot[..., r // 2:], rot[..., : r // 2]], -1)
    return torch.cat([rot * cos + half * sin, rest], -1)


def attention(x, W, prefix, c):
    b, t, _ = x.shape
    n, kv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    qkv = (x @ W[f"{prefix}.query_key_value.weight"].T).view(b, t, n + 2 * kv, d)
    q, k, v = qkv[:, :, :n], qkv[:, :, n:n + kv], qkv[:, :, n + kv:]  # rows [Q | K | V]
    q = rms_norm(q, W[f"{prefix}.query_layernorm.weight"], c["rms_norm_eps"])
    k = rms_norm(k, W[f"{prefix}.key_layernorm.weight"], c["rms_norm_eps"])
    positions = torch.arange(t)
    q, k, v = (rotate(q.transpose(1, 2), positions, c), rotate(k.transpose(1, 2), positions, c),
               v.transpose(1, 2))
    k, v = k.repeat_interleave(n // kv, dim=1), v.repeat_interleave(n // kv, dim=1)
    scores = q @ k.transpose(-1, -2) / d**0.5
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, n * d)
    return out @ W[f"{prefix}.dense.weight"].T


def moe(x, W, prefix, c):
    shape, x = x.shape, x.reshape(-1, x.shape[-1])
    e, k, groups = c["num_experts"], c["num_experts_per_tok"], c["n_group"]
    scores = torch.sigmoid(x @ W[f"{prefix}.gate.weight"].T)
    biased = scores + W[f"{prefix}.gate.expert_bias"]  # the bias picks experts, never weighs them
    group_scores = biased.view(-1, groups, e // groups).topk(2, -1).values.sum(-1)
    kept = group_scores.topk(c["topk_group"], -1).indices
    group_mask = torch.zeros_like(group_scores).scatter(1, kept, 1.0).bool()
    expert_mask = group_mask.repeat_interleave(e // groups, dim=1)
    chosen = biased.masked_fill(~expert_mask, float("-inf")).topk(k, -1).indices
    weights = scores.gather(1, chosen)
    weights = weights / (weights.sum(-1, keepdim=True) + 1e-20) * c["routed_scaling_factor"]
    out = swiglu(x, W, f"{prefix}.shared_experts")
    for expert in range(e):
        token, slot = (chosen == expert).nonzero(as_tuple=True)
        if len(token):
            y = swiglu(x[token], W, f"{prefix}.experts.{expert}")
            out = out.index_add(0, token, y * weights[token, slot][:, None])
    return out.view(shape)


def block(x, W, prefix, c, use_moe):
    eps = c["rms_norm_eps"]
    x = x + attention(rms_norm(x, W[f"{prefix}.input_layernorm.weight"], eps), W,
                      f"{prefix}.attention", c)
    h = rms_norm(x, W[f"{prefix}.post_attention_layernorm.weight"], eps)
    return x + (moe(h, W, f"{prefix}.mlp", c) if use_moe else swiglu(h, W, f"{prefix}.mlp"))


def forward(W, c, ids):
    """(logits, mtp_logits) of BailingMoeV2 with one MTP layer stored as layer L."""
    eps, layers = c["rms_norm_eps"], c["num_hidden_layers"]
    emb, head = W["model.word_embeddings.weight"], W["lm_head.weight"]
    x = emb[ids]
    for i in range(layers):
        x = block(x, W, f"model.layers.{i}", c, use_moe=i >= c["first_k_dense_replace"])
    h = rms_norm(x, W["model.norm.weight"], eps)
    mtp_logits, next_ids = [], ids
    for j in range(c["num_nextn_predict_layers"]):
        p = f"model.layers.{layers + j}"
        next_ids = torch.cat([next_ids[:, 1:], torch.zeros_like(next_ids[:, :1])], 1)
        u = torch.cat([rms_norm(emb[next_ids], W[f"{p}.enorm.weight"], eps),
                       rms_norm(h, W[f"{p}.hnorm.weight"], eps)], -1) @ W[f"{p}.eh_proj.weight"].T
        h = rms_norm(block(u, W, p, c, use_moe=True), W[f"{p}.final_layernorm.weight"], eps)
        mtp_logits.append(h @ head.T)
    return (rms_norm(x, W["model.norm.weight"], eps) @ head.T), torch.stack(mtp_logits)


@pytest.mark.parametrize("name", ["fp32", "sharded"])
def test_torch_forward_of_export_matches_fixture(name, fp32_export, imported, tmp_path,
                                                 bailing_tiny_dir):
    from ling_jax.interop.hf_export import export_hf

    hf_dir = fp32_export
    if name == "sharded":
        hf_dir = export_hf(*imported, tmp_path / "hf", dtype="float32", max_shard_bytes=300_000)
    weights = {k: v.double() for k, v in read_tensors(hf_dir).items()}
    config = json.loads((hf_dir / "config.json").read_text())
    ref = np.load(bailing_tiny_dir / "reference.npz")
    with torch.no_grad():
        logits, mtp_logits = forward(weights, config, torch.from_numpy(ref["input_ids"]))
    assert logits.shape == (2, 24, 512) and mtp_logits.shape == (1, 2, 24, 512)
    np.testing.assert_allclose(logits.numpy(), ref["logits"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(mtp_logits.numpy(), ref["mtp_logits"], rtol=0, atol=1e-5)
