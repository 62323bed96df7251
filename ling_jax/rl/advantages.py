"""Group z-score advantages [reference §7.3]: A_ij = (R_ij - mean_j R_ij) / (std_j R_ij + eps)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_EPS = 1e-6


def group_advantages(rewards: jax.Array, *, eps: float = DEFAULT_EPS, ddof: int = 0) -> jax.Array:
    """Rewards [P, G] (G samples per prompt) -> advantages [P, G] in float32 or wider.

    std is over each prompt's G samples with `ddof` (0: population std, as in the LPO formula;
    1: the unbiased std some GRPO codes use). A group whose rewards are all equal carries no
    learning signal and gets exactly 0, independent of rounding. Flatten row-major to get the
    per-response advantages [P*G] the objectives take.
    """
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [P, G] (prompts x samples), got shape {rewards.shape}")
    if not 0 <= ddof < max(rewards.shape[1], 1):
        raise ValueError(f"ddof must be in [0, G) with G={rewards.shape[1]}, got {ddof}")
    r_PG = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32))
    mean_P1 = jnp.mean(r_PG, axis=1, keepdims=True)
    std_P1 = jnp.std(r_PG, axis=1, keepdims=True, ddof=ddof)
    # Equal rewards -> 0 exactly (max == min), not a rounding residue divided by eps.
    flat_P1 = jnp.max(r_PG, axis=1, keepdims=True) == jnp.min(r_PG, axis=1, keepdims=True)
    return jnp.where(flat_P1, 0.0, (r_PG - mean_P1) / (std_P1 + eps))
