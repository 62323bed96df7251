"""GRPO objective: one importance ratio and PPO clip per token, token-mean over the group.

J = (1 / sum_i |y_i|) sum_i sum_t min(r_it A_i, clip(r_it, 1-eps, 1+eps_high) A_i),
r_it = exp(logp_it - logp_old_it). The token-mean over the whole group (not the per-response
mean of the original GRPO paper) is the normalisation LPO shares [reference §7.3].
"""

from __future__ import annotations

import jax.numpy as jnp

from ling_jax.rl.objectives.common import (
    Array,
    Diagnostics,
    check_eps,
    clipped_surrogate,
    finish,
    prepare,
)

DEFAULT_EPS = 0.2


def grpo_loss(
    logp: Array,
    logp_old: Array,
    mask: Array,
    advantages: Array,
    sentence_ids: Array,
    *,
    eps: float = DEFAULT_EPS,
    eps_high: float | None = None,
    logp_ref: Array | None = None,
    kl_beta: float = 0.0,
) -> tuple[Array, Diagnostics]:
    """Loss -J of GRPO (sentence_ids are ignored); eps_high=None means symmetric clipping."""
    eps_low, eps_high = check_eps(eps, eps_high)
    b = prepare(logp, logp_old, mask, advantages, sentence_ids, logp_ref)
    ratio_NT = jnp.exp(b.log_ratio_NT)
    surrogate_NT, clipped_NT = clipped_surrogate(ratio_NT, b.adv_N[:, None], eps_low, eps_high)
    objective = jnp.sum(jnp.where(b.valid_NT, surrogate_NT, 0.0)) / b.num_tokens
    clip_fraction = jnp.sum(clipped_NT & b.valid_NT) / b.num_tokens
    mean_ratio = jnp.sum(jnp.where(b.valid_NT, ratio_NT, 0.0)) / b.num_tokens
    return finish(b, objective, clip_fraction, mean_ratio, logp_ref, kl_beta)
