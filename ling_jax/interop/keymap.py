"""HF BailingMoeV2 state-dict keys ↔ our parameter tree (reference §3).

Each `TensorMap` names one HF tensor, the leaf of our pure-dict state it lives in, the index into
stacked axes (layer, expert) and how its layout differs. Import and export both walk this one list,
so a key can never be read one way and written another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from ling_jax.config.model import num_moe_layers

# Layout transforms between HF (torch Linear [out, in]) and ours (einsum [in, ..., out]).
COPY, TRANSPOSE, QKV_Q, QKV_K, QKV_V, OUT_PROJ = "copy", "T", "qkv_q", "qkv_k", "qkv_v", "o"


@dataclasses.dataclass(frozen=True)
class TensorMap:
    hf_key: str
    path: tuple[str | int, ...]  # leaf path in nnx.state(model).to_pure_dict()
    index: tuple[int, ...]  # leading stacked indices (layer and/or expert) inside that leaf
    transform: str


def _attention(prefix: str, path: tuple, index: tuple) -> Iterator[TensorMap]:
    qkv = f"{prefix}.attention.query_key_value.weight"
    yield TensorMap(qkv, (*path, "attn", "q_proj"), index, QKV_Q)
    yield TensorMap(qkv, (*path, "attn", "k_proj"), index, QKV_K)
    yield TensorMap(qkv, (*path, "attn", "v_proj"), index, QKV_V)
    yield TensorMap(f"{prefix}.attention.dense.weight", (*path, "attn", "o_proj"), index, OUT_PROJ)
    yield TensorMap(f"{prefix}.attention.query_layernorm.weight", (*path, "attn", "q_norm", "scale"),
                    index, COPY)
    yield TensorMap(f"{prefix}.attention.key_layernorm.weight", (*path, "attn", "k_norm", "scale"),
                    index, COPY)
    yield TensorMap(f"{prefix}.input_layernorm.weight", (*path, "input_norm", "scale"), index, COPY)
    yield TensorMap(f"{prefix}.post_attention_layernorm.weight", (*path, "post_attn_norm", "scale"),
                    index, COPY)


def _swiglu(prefix: str, path: tuple, index: tuple) -> Iterator[TensorMap]:
    for name in ("gate_proj", "up_proj", "down_proj"):
        yield TensorMap(f"{prefix}.{name}.weight", (*path, name), index, TRANSPOSE)


def _moe(cfg, prefix: str, path: tuple, index: tuple) -> Iterator[TensorMap]:
    yield TensorMap(f"{prefix}.gate.weight", (*path, "router"), index, TRANSPOSE)
    yield TensorMap(f"{prefix}.gate.expert_bias", (*path, "expert_bias"), index, COPY)
    for e in range(cfg.num_experts):
        for name in ("gate_proj", "up_proj", "down_proj"):
            yield TensorMap(f"{prefix}.experts.{e}.{name}.weight", (*path, name), (*index, e),
                            TRANSPOSE)
    if cfg.num_shared_experts:
        yield from _swiglu(f"{prefix}.shared_experts", (*path, "shared"), index)


def tensor_maps(cfg) -> list[TensorMap]:
    """Every HF tensor of a Ling 2.0 checkpoint with this config, in the upstream key order."""
    maps = [TensorMap("model.word_embeddings.weight", ("embed",), (), COPY)]
    k = cfg.first_k_dense_replace
    for i in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{i}"
        stack, index = ("dense_layers", (i,)) if i < k else ("moe_layers", (i - k,))
        maps += _attention(prefix, (stack,), index)
        if i < k:
            maps += _swiglu(f"{prefix}.mlp", (stack, "mlp"), index)
        else:
            maps += _moe(cfg, f"{prefix}.mlp", (stack, "mlp"), index)
    for j in range(cfg.num_nextn_predict_layers):
        prefix, path = f"model.layers.{cfg.num_hidden_layers + j}", ("mtp_layers", j)
        for name, ours in (("enorm", "enorm"), ("hnorm", "hnorm"), ("final_layernorm", "final_norm")):
            maps.append(TensorMap(f"{prefix}.{name}.weight", (*path, ours, "scale"), (), COPY))
        maps.append(TensorMap(f"{prefix}.eh_proj.weight", (*path, "eh_proj"), (), TRANSPOSE))
        maps += _attention(prefix, (*path, "block"), ())
        maps += _moe(cfg, f"{prefix}.mlp", (*path, "block", "mlp"), ())
    maps.append(TensorMap("model.norm.weight", ("final_norm", "scale"), (), COPY))
    maps.append(TensorMap("lm_head.weight", ("lm_head",), (), TRANSPOSE))
    assert num_moe_layers(cfg) >= 0
    return maps


def hf_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Expected shape of every HF key (reference §3 table)."""
    d, n, kv, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    m, i_dense = cfg.moe_intermediate_size, cfg.intermediate_size
    shared = cfg.moe_shared_expert_intermediate_size or m * cfg.num_shared_experts
    shapes = {}
    for t in tensor_maps(cfg):
        key = t.hf_key
        name = key.rsplit(".", 2)[-2] if key.endswith(".weight") else "expert_bias"
        if key.endswith("query_key_value.weight"):
            shape = ((n + 2 * kv) * h, d)
        elif key.endswith("attention.dense.weight"):
            shape = (d, n * h)
        elif name in ("query_layernorm", "key_layernorm"):
            shape = (h,)
        elif name in ("word_embeddings", "lm_head"):
            shape = (cfg.vocab_size, d)
        elif name == "gate":
            shape = (cfg.num_experts, d)
        elif name == "expert_bias":
            shape = (cfg.num_experts,)
        elif name == "eh_proj":
            shape = (d, 2 * d)
        elif name in ("gate_proj", "up_proj", "down_proj"):
            width = m if ".experts." in key else shared if "shared_experts" in key else i_dense
            shape = (width, d) if name != "down_proj" else (d, width)
        else:
            shape = (d,)
        shapes[key] = shape
    return shapes


def to_ours(t: TensorMap, hf_value: np.ndarray, cfg) -> np.ndarray:
    """The slice of our leaf that HF tensor `t` fills."""
    n, kv, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if t.transform == COPY:
        return hf_value
    if t.transform == TRANSPOSE:
        return hf_value.T
    if t.transform == OUT_PROJ:
        return hf_value.T.reshape(n, h, -1)
    lo, hi = {QKV_Q: (0, n), QKV_K: (n, n + kv), QKV_V: (n + kv, n + 2 * kv)}[t.transform]
    return hf_value[lo * h:hi * h].T.reshape(-1, hi - lo, h)


def to_hf(maps: list[TensorMap], leaves: list[np.ndarray], cfg) -> np.ndarray:
    """One HF tensor from our leaf slices (several only for the fused query_key_value)."""
    t = maps[0]
    if t.transform in (QKV_Q, QKV_K, QKV_V):
        parts = {m.transform: v.reshape(v.shape[0], -1).T for m, v in zip(maps, leaves, strict=True)}
        return np.concatenate([parts[QKV_Q], parts[QKV_K], parts[QKV_V]], axis=0)
    (value,) = leaves
    if t.transform == COPY:
        return value
    if t.transform == OUT_PROJ:
        return value.reshape(-1, value.shape[-1]).T
    return value.T
