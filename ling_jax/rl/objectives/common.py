"""Shared pieces of the clipped policy-gradient objectives (GRPO, GSPO, LPO).

Every objective has the signature of `Objective`: per-token log-probs `logp` (the only input that
carries gradients), `logp_old` from the sampling policy, a response `mask`, one advantage per
response and per-token `sentence_ids` (-1 outside the response). It returns the scalar loss to
minimise (-J, plus beta * KL when a reference policy is given) and a dict of scalar diagnostics.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array
Diagnostics = dict[str, Array]


class Objective(Protocol):
    """fn(logp, logp_old, mask, advantages, sentence_ids, *, eps, eps_high, logp_ref, kl_beta)."""

    def __call__(
        self,
        logp: Array,
        logp_old: Array,
        mask: Array,
        advantages: Array,
        sentence_ids: Array,
        *,
        eps: float = ...,
        eps_high: float | None = ...,
        logp_ref: Array | None = None,
        kl_beta: float = 0.0,
    ) -> tuple[Array, Diagnostics]: ...


class Batch(NamedTuple):
    """Validated inputs in a float dtype; everything but `logp` is cut from the gradient."""

    logp_NT: Array
    log_ratio_NT: Array  # logp - logp_old on valid tokens, 0 elsewhere
    valid_NT: Array  # bool: token is part of a response
    adv_N: Array
    sentence_ids_NT: Array  # int32
    num_tokens: Array  # max(number of valid tokens, 1), float


def _is_concrete_number(x: object) -> bool:
    return isinstance(x, (int, float))


def check_eps(eps: float, eps_high: float | None) -> tuple[float, float]:
    """Returns (eps_low, eps_high); raises ValueError on a concrete out-of-range value."""
    eps_high = eps if eps_high is None else eps_high
    if _is_concrete_number(eps) and not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}: the lower clip bound is 1 - eps")
    if _is_concrete_number(eps_high) and eps_high < 0.0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high}")
    return eps, eps_high


def _check_shapes(logp, logp_old, mask, advantages, sentence_ids, logp_ref) -> None:
    if logp.ndim != 2:
        raise ValueError(f"logp must be [N, T], got shape {logp.shape}")
    for name, x in (("logp_old", logp_old), ("mask", mask), ("sentence_ids", sentence_ids)):
        if x.shape != logp.shape:
            raise ValueError(f"{name} must have the shape of logp {logp.shape}, got {x.shape}")
    if logp_ref is not None and logp_ref.shape != logp.shape:
        raise ValueError(f"logp_ref must have the shape of logp {logp.shape}, got {logp_ref.shape}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"advantages must be [N] = {logp.shape[:1]} (one per response), got {advantages.shape}"
        )


def prepare(logp, logp_old, mask, advantages, sentence_ids, logp_ref=None) -> Batch:
    """Checks shapes, promotes to >= float32 and cuts the non-policy inputs from the gradient."""
    logp, logp_old, mask = jnp.asarray(logp), jnp.asarray(logp_old), jnp.asarray(mask)
    advantages, sentence_ids = jnp.asarray(advantages), jnp.asarray(sentence_ids)
    _check_shapes(logp, logp_old, mask, advantages, sentence_ids, logp_ref)
    dtype = jnp.promote_types(logp.dtype, jnp.float32)
    valid_NT = jax.lax.stop_gradient(mask) > 0
    logp_NT = logp.astype(dtype)
    logp_old_NT = jax.lax.stop_gradient(logp_old).astype(dtype)
    # Zero the log-ratio off the response so padding (even -inf/nan log-probs) never leaks in.
    log_ratio_NT = jnp.where(valid_NT, logp_NT - jnp.where(valid_NT, logp_old_NT, 0.0), 0.0)
    num_tokens = jnp.maximum(jnp.sum(valid_NT, dtype=dtype), 1.0)
    return Batch(
        logp_NT=logp_NT,
        log_ratio_NT=log_ratio_NT,
        valid_NT=valid_NT,
        adv_N=jax.lax.stop_gradient(advantages).astype(dtype),
        sentence_ids_NT=sentence_ids.astype(jnp.int32),
        num_tokens=num_tokens,
    )


def clipped_surrogate(ratio, adv, eps_low: float, eps_high: float) -> tuple[Array, Array]:
    """PPO term min(r A, clip(r, 1-eps_low, 1+eps_high) A) and whether the clip binds (strictly)."""
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    return jnp.minimum(unclipped, clipped), clipped < unclipped


def k3_kl_per_token(logp_NT: Array, logp_ref: Array, valid_NT: Array) -> Array:
    """k3 estimator of KL(pi || pi_ref) per token: exp(d) - d - 1, d = ref - logp; 0 off-mask."""
    ref_NT = jax.lax.stop_gradient(jnp.asarray(logp_ref)).astype(logp_NT.dtype)
    d_NT = jnp.where(valid_NT, jnp.where(valid_NT, ref_NT, 0.0) - logp_NT, 0.0)
    return jnp.expm1(d_NT) - d_NT


def finish(
    batch: Batch,
    objective: Array,
    clip_fraction: Array,
    mean_ratio: Array,
    logp_ref: Array | None,
    kl_beta: float,
) -> tuple[Array, Diagnostics]:
    """loss = -J (+ kl_beta * token-mean k3 KL when logp_ref is given) and the diagnostics."""
    if logp_ref is None and _is_concrete_number(kl_beta) and kl_beta != 0.0:
        raise ValueError(f"kl_beta={kl_beta} needs logp_ref (the frozen reference log-probs)")
    loss = -objective
    diagnostics = {
        "policy_loss": -objective,
        "clip_fraction": clip_fraction,
        "mean_ratio": mean_ratio,
        "num_tokens": batch.num_tokens,
    }
    if logp_ref is not None:
        kl = jnp.sum(k3_kl_per_token(batch.logp_NT, logp_ref, batch.valid_NT)) / batch.num_tokens
        loss = loss + kl_beta * kl
        diagnostics["kl"] = kl
    return loss, jax.tree.map(jax.lax.stop_gradient, diagnostics)
