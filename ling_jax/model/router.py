"""Sigmoid router with aux-loss-free expert bias and group-limited top-k (reference §2.5 steps 1-5)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Routing(NamedTuple):
    expert_idx_TK: jax.Array  # int32 chosen experts per token
    weights_TK: jax.Array  # fp32 combine weights (sum = routed_scaling_factor)
    logits_TE: jax.Array  # fp32 router logits (for z-loss)


def group_limited_topk(
    selection_TE: jax.Array, *, top_k: int, n_group: int, topk_group: int
) -> jax.Array:
    """Indices of the top_k experts inside the topk_group best groups (group score = sum of top-2)."""
    num_tokens, num_experts = selection_TE.shape
    if n_group > 1:
        grouped = selection_TE.reshape(num_tokens, n_group, num_experts // n_group)
        group_scores = jax.lax.top_k(grouped, 2)[0].sum(-1)
        _, kept_groups = jax.lax.top_k(group_scores, topk_group)
        group_mask = (
            jnp.zeros((num_tokens, n_group), bool)
            .at[jnp.arange(num_tokens)[:, None], kept_groups]
            .set(True)
        )
        expert_mask = jnp.repeat(group_mask, num_experts // n_group, axis=1)
        selection_TE = jnp.where(expert_mask, selection_TE, -jnp.inf)
    return jax.lax.top_k(selection_TE, top_k)[1]


def route_tokens(
    x_TD: jax.Array,
    router_DE: jax.Array,
    expert_bias_E: jax.Array,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
) -> Routing:
    """fp32 logits → sigmoid → (+bias for selection only) → group top-k → renormalised × scale."""
    logits = jnp.einsum(
        "td,de->te",
        x_TD.astype(jnp.float32),
        router_DE.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    scores = jax.nn.sigmoid(logits)
    idx = group_limited_topk(
        scores + expert_bias_E.astype(jnp.float32),
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
    )
    chosen = jnp.take_along_axis(scores, idx, axis=-1)
    if top_k > 1:
        chosen = chosen / (chosen.sum(-1, keepdims=True) + 1e-20)
    return Routing(idx.astype(jnp.int32), chosen * routed_scaling_factor, logits)


def expert_counts(
    expert_idx_TK: jax.Array, num_experts: int, token_mask_T: jax.Array | None = None
) -> jax.Array:
    """Tokens routed to each expert (int32 [E]); masked tokens (padding) are not counted."""
    one_hot = jax.nn.one_hot(expert_idx_TK, num_experts, dtype=jnp.int32).sum(1)
    if token_mask_T is not None:
        one_hot = one_hot * token_mask_T.astype(jnp.int32)[:, None]
    return one_hot.sum(0)
