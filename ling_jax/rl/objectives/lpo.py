"""LPO objective: one importance ratio per sentence, token-mean over the group [reference §7.3].

r_ik = exp((1/|s_ik|) sum_{t in s_ik} (logp_t - logp_old_t)) for sentence k of response i;
J = (1 / sum_i |y_i|) sum_i sum_k |s_ik| min(r_ik A_i, clip(r_ik, 1-eps, 1+eps_high) A_i),
i.e. every token carries its sentence's clipped term and the sum is a token-mean over the group.
One-token sentences give GRPO; one sentence per response gives a length-weighted GSPO.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ling_jax.rl.objectives.common import (
    Array,
    Diagnostics,
    check_eps,
    clipped_surrogate,
    finish,
    prepare,
)

DEFAULT_EPS = 0.03


def sentence_mean(values_NT: Array, sentence_ids_NT: Array, valid_NT: Array) -> Array:
    """Mean of `values_NT` over each token's sentence, broadcast back to the tokens ([N, T]).

    Sentences are keyed by (row, id) with 0 <= id < T, so N*T segments bound every id and the
    shapes stay fixed under jit; invalid tokens go to one extra dump segment and get 0.
    """
    n, t = values_NT.shape
    dump = n * t
    rows_NT = jnp.arange(n, dtype=jnp.int32)[:, None] * t
    segment_NT = jnp.where(valid_NT, rows_NT + sentence_ids_NT, dump)
    sums_S = jax.ops.segment_sum(
        jnp.where(valid_NT, values_NT, 0.0).reshape(-1), segment_NT.reshape(-1), dump + 1
    )
    counts_S = jax.ops.segment_sum(
        valid_NT.astype(values_NT.dtype).reshape(-1), segment_NT.reshape(-1), dump + 1
    )
    mean_S = sums_S / jnp.maximum(counts_S, 1.0)
    return jnp.where(valid_NT, mean_S[segment_NT], 0.0)


def lpo_loss(
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
    """Loss -J of LPO. Masked tokens need a sentence id in [0, T); others are left out entirely."""
    eps_low, eps_high = check_eps(eps, eps_high)
    b = prepare(logp, logp_old, mask, advantages, sentence_ids, logp_ref)
    t = b.valid_NT.shape[1]
    sid_NT = b.sentence_ids_NT
    b = b._replace(valid_NT=b.valid_NT & (sid_NT >= 0) & (sid_NT < t))
    b = b._replace(num_tokens=jnp.maximum(jnp.sum(b.valid_NT, dtype=b.num_tokens.dtype), 1.0))
    ratio_NT = jnp.exp(sentence_mean(b.log_ratio_NT, sid_NT, b.valid_NT))
    surrogate_NT, clipped_NT = clipped_surrogate(ratio_NT, b.adv_N[:, None], eps_low, eps_high)
    objective = jnp.sum(jnp.where(b.valid_NT, surrogate_NT, 0.0)) / b.num_tokens
    # Token-weighted: the share of response tokens whose sentence is clipped.
    clip_fraction = jnp.sum(clipped_NT & b.valid_NT) / b.num_tokens
    mean_ratio = jnp.sum(jnp.where(b.valid_NT, ratio_NT, 0.0)) / b.num_tokens
    return finish(b, objective, clip_fraction, mean_ratio, logp_ref, kl_beta)
