"""GSPO objective: one length-normalised importance ratio per response, sequence-mean [GSPO].

s_i = exp((1/|y_i|) sum_t (logp_it - logp_old_it)),
J = (1 / #responses) sum_i min(s_i A_i, clip(s_i, 1-eps, 1+eps_high) A_i).
Normalisation: every non-empty response weighs the same (the GSPO paper's mean over the group of
sequences), unlike the token-mean of GRPO and LPO; empty responses (no mask) are left out.
Clip defaults follow the GSPO paper (left 3e-4, right 4e-4): sequence ratios sit much closer to
1 than token ratios, so the band is two to three orders of magnitude narrower than GRPO's 0.2.
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

DEFAULT_EPS = 3e-4
DEFAULT_EPS_HIGH = 4e-4


def gspo_loss(
    logp: Array,
    logp_old: Array,
    mask: Array,
    advantages: Array,
    sentence_ids: Array,
    *,
    eps: float = DEFAULT_EPS,
    eps_high: float | None = DEFAULT_EPS_HIGH,
    logp_ref: Array | None = None,
    kl_beta: float = 0.0,
) -> tuple[Array, Diagnostics]:
    """Loss -J of GSPO (sentence_ids are ignored); pass eps_high=None for a symmetric clip."""
    eps_low, eps_high = check_eps(eps, eps_high)
    b = prepare(logp, logp_old, mask, advantages, sentence_ids, logp_ref)
    length_N = jnp.sum(b.valid_NT, axis=1, dtype=b.log_ratio_NT.dtype)
    has_N = length_N > 0
    ratio_N = jnp.exp(jnp.sum(b.log_ratio_NT, axis=1) / jnp.maximum(length_N, 1.0))
    surrogate_N, clipped_N = clipped_surrogate(ratio_N, b.adv_N, eps_low, eps_high)
    num_seqs = jnp.maximum(jnp.sum(has_N, dtype=ratio_N.dtype), 1.0)
    objective = jnp.sum(jnp.where(has_N, surrogate_N, 0.0)) / num_seqs
    clip_fraction = jnp.sum(clipped_N & has_N) / num_seqs
    mean_ratio = jnp.sum(jnp.where(has_N, ratio_N, 0.0)) / num_seqs
    return finish(b, objective, clip_fraction, mean_ratio, logp_ref, kl_beta)
