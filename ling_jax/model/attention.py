"""GQA attention with per-head QK RMSNorm before partial RoPE (reference §2.4)."""

from __future__ import annotations

import jax
from flax import nnx

from ling_jax.config.model import linear_quant
from ling_jax.model.linear import param, project
from ling_jax.model.norms import RMSNorm
from ling_jax.model.rotary import apply_rope
from ling_jax.ops.attention_backends import attend
from ling_jax.ops.attention_mask import AttentionMask, self_attention_mask


def attention_mask(segment_ids_BT: jax.Array | None, batch: int, length: int) -> AttentionMask:
    """Causal by index and, for packed rows, within the same segment; O(T): no [T, T] array."""
    return self_attention_mask(segment_ids_BT, batch, length)


class Attention(nnx.Module):
    """q/k/v/o projections kept per head; HF's fused query_key_value is split on import."""

    def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        std = cfg.initializer_range
        self.dtype, self.quant = dtype, linear_quant(cfg)
        self.backend = cfg.attention_backend
        self.blocks = dict(block_q=cfg.attention_block_q, block_kv=cfg.attention_block_kv)
        self.q_proj = param(
            rngs, (d, n, h), ("embed", "heads", "head_dim"), std=std, dtype=param_dtype
        )
        self.k_proj = param(
            rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), std=std, dtype=param_dtype
        )
        self.v_proj = param(
            rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), std=std, dtype=param_dtype
        )
        self.o_proj = param(
            rngs, (n, h, d), ("heads", "head_dim", "embed"), std=std, dtype=param_dtype
        )
        self.q_norm = RMSNorm(
            h, eps=cfg.rms_norm_eps, param_dtype=param_dtype, axis_name="head_dim"
        )
        self.k_norm = RMSNorm(
            h, eps=cfg.rms_norm_eps, param_dtype=param_dtype, axis_name="head_dim"
        )

    def qkv(self, x_BTD, cos, sin) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projected, QK-normed, rotated q [B,T,N,H] and k, v [B,T,K,H]."""
        q = self.q_norm(project("btd,dnh->btnh", x_BTD, self.q_proj[...], self.dtype, self.quant))
        k = self.k_norm(project("btd,dkh->btkh", x_BTD, self.k_proj[...], self.dtype, self.quant))
        v = project("btd,dkh->btkh", x_BTD, self.v_proj[...], self.dtype, self.quant)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def output(self, attn_BTNH) -> jax.Array:
        return project("btnh,nhd->btd", attn_BTNH, self.o_proj[...], self.dtype, self.quant)

    def attend(self, q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask, backend: str | None = None):
        """[B,T,N,H] through the configured backend (or `backend`)."""
        return attend(backend or self.backend, q_BTNH, k_BSKH, v_BSKH, mask, **self.blocks)

    def __call__(self, x_BTD, cos, sin, mask: AttentionMask) -> jax.Array:
        q, k, v = self.qkv(x_BTD, cos, sin)
        return self.output(self.attend(q, k, v, mask))
