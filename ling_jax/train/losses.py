"""Training losses in float32: next-token cross-entropy, MTP targets and loss, router z-loss.

Batch contract (from the data pipeline): the batch is already shifted, targets[b, t] is the token
after position t *in the same document*, and loss_mask[b, t] says whether that target is trained on
(false for padding, the last token of a document or row, prompt tokens of CoT data, ...).
segment_ids[b, t] names the packed document of position t.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ling_jax.ops.token_loss import token_nll


def next_token_loss(
    logits: jax.Array, targets: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(sum of cross-entropy over unmasked positions [float32], number of those positions [int32]).

    logits [B, T, V], targets [B, T] ints, loss_mask [B, T] (bool or 0/1). Return sums, not a mean,
    so that microbatches and devices combine exactly: mean = Σ sum_loss / Σ token_count.
    """
    if jnp.shape(logits)[:-1] != jnp.shape(targets) or jnp.shape(targets) != jnp.shape(loss_mask):
        raise ValueError(
            f"logits {jnp.shape(logits)} must be targets/loss_mask shape + [vocab]; got targets "
            f"{jnp.shape(targets)}, loss_mask {jnp.shape(loss_mask)}"
        )
    mask = jnp.asarray(loss_mask).astype(bool)
    nll = token_nll(logits, targets, mask)
    return jnp.sum(nll), jnp.sum(mask, dtype=jnp.int32)


def _shift_left(x: jax.Array, k: int, fill: Any) -> jax.Array:
    """x[..., t + k] at position t, `fill` where t + k runs past the row end."""
    t = x.shape[-1]
    if k >= t:
        return jnp.full_like(x, fill)
    pad = jnp.full((*x.shape[:-1], k), fill, x.dtype)
    return jnp.concatenate([x[..., k:], pad], axis=-1)


def mtp_targets(
    targets: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, depth: int = 1
) -> tuple[jax.Array, jax.Array]:
    """Targets and mask for the MTP head at `depth` k: position t predicts token t + 1 + k.

    That token is targets[t + k]; it counts only if loss_mask[t + k] holds and t + k is in the same
    segment as t (never across documents or past the row end). Masked targets are set to 0.
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"MTP depth must be an integer >= 1, got {depth!r}")
    seg = jnp.asarray(segment_ids)
    # The shifted mask is False past the row end, so the fill of the segment shift never counts.
    same_segment = _shift_left(seg, depth, 0) == seg
    mask = _shift_left(jnp.asarray(loss_mask).astype(bool), depth, False) & same_segment
    shifted = _shift_left(jnp.asarray(targets), depth, 0)
    return jnp.where(mask, shifted, 0), mask


def z_loss(router_logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Router z-loss per layer: mean over tokens of logsumexp(router_logits)² (reference §4).

    router_logits [..., B, T, E] (pre-sigmoid; leading axes are layers), mask [B, T] selects the
    tokens (default: all). Returns shape router_logits.shape[:-3] (a scalar for one layer).
    """
    lse = jax.nn.logsumexp(jnp.asarray(router_logits, jnp.float32), axis=-1)  # [..., B, T]
    if mask is None:
        return jnp.mean(jnp.square(lse), axis=(-2, -1))
    m = jnp.broadcast_to(jnp.asarray(mask).astype(jnp.float32), lse.shape)
    total = jnp.sum(jnp.square(lse) * m, axis=(-2, -1))
    return total / jnp.maximum(jnp.sum(m, axis=(-2, -1)), 1.0)


def _mtp_loss(
    mtp_logits: jax.Array, targets: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array
) -> jax.Array:
    """Mean over depths of the per-depth mean cross-entropy; mtp_logits [D, B, T, V]."""
    losses = []
    for d in range(mtp_logits.shape[0]):
        t_d, m_d = mtp_targets(targets, loss_mask, segment_ids, depth=d + 1)
        s, n = next_token_loss(mtp_logits[d], t_d, m_d)
        losses.append(s / jnp.maximum(n, 1))
    return jnp.mean(jnp.stack(losses))


def total_loss(
    logits: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    segment_ids: jax.Array,
    *,
    mtp_logits: jax.Array | None = None,
    mtp_weight: float = 0.0,
    router_logits: jax.Array | None = None,
    router_mask: jax.Array | None = None,
    z_coef: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """loss = lm_loss + mtp_weight · mean_depth(mtp_loss) + z_coef · Σ_layers z_loss.

    lm and MTP losses are token means over this batch. The z-loss term sums the per-layer z-losses
    (Megatron adds coeff·z for every MoE layer); the reported `z_loss` is their mean over layers.
    mtp_logits [D, B, T, V]: depth d+1 predicts token t + 2 + d. Metrics: loss, lm_loss, mtp_loss,
    z_loss, num_tokens.
    """
    lm_sum, num_tokens = next_token_loss(logits, targets, loss_mask)
    lm_loss = lm_sum / jnp.maximum(num_tokens, 1)
    loss = lm_loss
    mtp = jnp.zeros((), jnp.float32)
    if mtp_logits is not None and jnp.shape(mtp_logits)[0] > 0:
        mtp = _mtp_loss(mtp_logits, targets, loss_mask, segment_ids)
        loss = loss + mtp_weight * mtp
    z = jnp.zeros((), jnp.float32)
    if router_logits is not None:
        z_per_layer = z_loss(router_logits, router_mask)
        loss = loss + z_coef * jnp.sum(z_per_layer)
        z = jnp.mean(z_per_layer)
    metrics = {
        "loss": loss,
        "lm_loss": lm_loss,
        "mtp_loss": mtp,
        "z_loss": z,
        "num_tokens": num_tokens,
    }
    return loss, metrics
