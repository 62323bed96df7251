"""Multi-token prediction layer, DeepSeek-V3 style (reference §2.6): predicts token t+1+depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ling_jax.model.decoder import DecoderLayer
from ling_jax.model.linear import param, project
from ling_jax.model.norms import RMSNorm


class MTPLayer(nnx.Module):
    """u = eh_proj([enorm(emb(x_{t+1})); hnorm(h_t)]) → MoE decoder layer → final_norm."""

    def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.dtype = dtype
        self.enorm = RMSNorm(d, eps=eps, param_dtype=param_dtype)
        self.hnorm = RMSNorm(d, eps=eps, param_dtype=param_dtype)
        # Input rows are [embedding ; hidden] (HF eh_proj weight [H, 2H]).
        self.eh_proj = param(
            rngs, (2 * d, d), (None, "embed"), std=cfg.initializer_range, dtype=param_dtype
        )
        self.block = DecoderLayer(
            cfg, use_moe=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.final_norm = RMSNorm(d, eps=eps, param_dtype=param_dtype)

    def __call__(self, h_BTD, emb_next_BTD, cos, sin, mask, token_mask=None):
        """Returns (normed hidden [B,T,D] for the shared head, (counts [E], router logits,
        dropped rows))."""
        u = jnp.concatenate([self.enorm(emb_next_BTD), self.hnorm(h_BTD)], axis=-1)
        u = project("btc,cd->btd", u, self.eh_proj[...], self.dtype)
        u, aux = self.block(u, cos, sin, mask, token_mask)
        return self.final_norm(u), aux


def shift_left(ids_BT: jax.Array, fill: int = 0) -> jax.Array:
    """ids rolled left by one with the last position filled (HF MTP input ids)."""
    return jnp.concatenate([ids_BT[:, 1:], jnp.full_like(ids_BT[:, :1], fill)], axis=1)
