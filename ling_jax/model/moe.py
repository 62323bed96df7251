"""Ling 2.0 MoE block: router → dispatch/expert compute (ops registry) → combine + shared expert."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ling_jax.config.model import expert_backend, linear_quant, shared_expert_width
from ling_jax.model.linear import param
from ling_jax.model.mlp import SwiGLU
from ling_jax.model.router import expert_counts, route_tokens
from ling_jax.ops import all_experts, expert_compute


class ExpertBias(nnx.Variable):
    """Aux-loss-free balancing bias: fp32 state, updated outside the optimizer, selection only."""


class MoE(nnx.Module):
    def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, e, f = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
        std = cfg.initializer_range
        self.dtype = dtype
        self.top_k, self.n_group, self.topk_group = (
            cfg.num_experts_per_tok,
            cfg.n_group,
            cfg.topk_group,
        )
        self.routed_scaling_factor = float(cfg.routed_scaling_factor)
        self.backend = expert_backend(cfg)
        self.block_size = int(cfg.moe_block_size)
        # Router weight and bias stay fp32 (reference §2.7): tiny bias changes flip selections.
        self.router = param(rngs, (d, e), ("embed", "expert"), std=std, dtype=jnp.float32)
        self.expert_bias = ExpertBias(jnp.zeros((e,), jnp.float32), logical_axes=("expert",))
        self.gate_proj = param(
            rngs, (e, d, f), ("expert", "embed", "mlp"), std=std, dtype=param_dtype
        )
        self.up_proj = param(
            rngs, (e, d, f), ("expert", "embed", "mlp"), std=std, dtype=param_dtype
        )
        self.down_proj = param(
            rngs, (e, f, d), ("expert", "mlp", "embed"), std=std, dtype=param_dtype
        )
        self.shared = nnx.data(None)
        if cfg.num_shared_experts > 0:
            self.shared = SwiGLU(
                d,
                shared_expert_width(cfg),
                std=std,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
                quant=linear_quant(cfg),
            )

    def inference_backend(self, num_tokens: int) -> str:
        """The backend for a forward no gradient will flow through: `all_experts` in place of the
        automatic `blocked` for a few tokens (decode steps; the same values from fewer, larger
        matmuls: ops.all_experts); otherwise the configured one."""
        if (self.backend == "blocked" and not self.block_size
                and all_experts.preferred(num_tokens, self.top_k, self.router.shape[-1])):
            return "all_experts"
        return self.backend

    def __call__(self, x_BTD: jax.Array, token_mask_BT: jax.Array | None = None, *,
                 inference: bool = False):
        """Returns (y [B,T,D], tokens per expert [E] int32, router logits [B,T,E] fp32,
        (token, slot) rows dropped by an expert-parallel capacity, int32 scalar).
        inference=True: no gradient flows through this call (see `inference_backend`)."""
        batch, length, hidden = x_BTD.shape
        backend = self.inference_backend(batch * length) if inference else self.backend
        x_TD = x_BTD.reshape(batch * length, hidden)
        routing = route_tokens(
            x_TD,
            self.router[...],
            self.expert_bias[...],
            top_k=self.top_k,
            n_group=self.n_group,
            topk_group=self.topk_group,
            routed_scaling_factor=self.routed_scaling_factor,
        )
        weights = expert_compute.ExpertWeights(
            self.gate_proj[...], self.up_proj[...], self.down_proj[...]
        )
        y_TD, dropped = expert_compute.compute_with_drops(backend)(
            x_TD,
            routing.expert_idx_TK,
            routing.weights_TK,
            weights,
            dtype=self.dtype,
            block_size=self.block_size,
        )
        y_BTD = y_TD.reshape(batch, length, hidden).astype(self.dtype)
        if self.shared is not None:
            y_BTD = y_BTD + self.shared(x_BTD)
        mask_T = None if token_mask_BT is None else token_mask_BT.reshape(-1)
        counts = expert_counts(routing.expert_idx_TK, self.router.shape[1], mask_T)
        return y_BTD, counts, routing.logits_TE.reshape(batch, length, -1), dropped
