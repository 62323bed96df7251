"""Pre-norm decoder layer: x += Attn(norm(x)); x += MLP-or-MoE(norm(x)) (reference §2.3)."""

from __future__ import annotations

from flax import nnx

from ling_jax.config.model import linear_quant
from ling_jax.model.attention import Attention
from ling_jax.model.mlp import SwiGLU
from ling_jax.model.moe import MoE
from ling_jax.model.norms import RMSNorm


class DecoderLayer(nnx.Module):
    def __init__(self, cfg, *, use_moe: bool, dtype, param_dtype, rngs: nnx.Rngs):
        eps = cfg.rms_norm_eps
        self.use_moe = use_moe
        self.input_norm = RMSNorm(cfg.hidden_size, eps=eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, eps=eps, param_dtype=param_dtype)
        if use_moe:
            self.mlp = MoE(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        else:
            self.mlp = SwiGLU(
                cfg.hidden_size,
                cfg.intermediate_size,
                std=cfg.initializer_range,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
                quant=linear_quant(cfg),
            )

    def __call__(self, x_BTD, cos, sin, mask, token_mask_BT=None, *, inference: bool = False):
        """Returns (x, (expert counts [E], router logits [B,T,E], dropped rows)); None for dense.
        inference=True: no gradient flows through this call (MoE.inference_backend)."""
        x_BTD = x_BTD + self.attn(self.input_norm(x_BTD), cos, sin, mask)
        h = self.post_attn_norm(x_BTD)
        if not self.use_moe:
            return x_BTD + self.mlp(h), None
        y, counts, logits, dropped = self.mlp(h, token_mask_BT, inference=inference)
        return x_BTD + y, (counts, logits, dropped)
