"""Aux-loss-free expert balancing: the zero-mean expert-bias update and load metrics (reference §4).

Once per optimizer step, for every MoE layer (the MTP layer's included), with c_i the tokens routed
to expert i over the whole global batch (all devices, all microbatches):
    e_i = mean_j(c_j) − c_i                      (positive: under-loaded, bias goes up)
    b_i ← b_i + u · (sign(e_i) − mean_j sign(e_j))
u is the phase's update rate (1e-3 pretrain, 1e-4 after context extension). Leading axes are layers;
the last axis is experts; each layer is updated independently. Everything is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def update_expert_bias(bias: jax.Array, counts: jax.Array, rate: float | jax.Array) -> jax.Array:
    """New float32 expert biases [..., E] from the global token counts per expert [..., E]."""
    if jnp.shape(bias) != jnp.shape(counts):
        raise ValueError(
            f"expert bias shape {jnp.shape(bias)} != token counts shape {jnp.shape(counts)}; "
            "both must be [..., num_experts] with the same layer axes"
        )
    c = jnp.asarray(counts, jnp.float32)
    error = jnp.mean(c, axis=-1, keepdims=True) - c
    s = jnp.sign(error)  # sign(0) = 0: an exactly balanced expert keeps its bias before centring
    delta = jnp.asarray(rate, jnp.float32) * (s - jnp.mean(s, axis=-1, keepdims=True))
    return jnp.asarray(bias, jnp.float32) + delta


def load_metrics(counts: jax.Array) -> dict[str, jax.Array]:
    """Per-layer load statistics over the expert axis; each value has shape counts.shape[:-1].

    max_min_ratio: max load / max(min load, 1) (a dead expert counts as load 1, so it stays finite);
    cv: std/mean of the loads (0 when no tokens);
    max_violation: (max − mean)/mean (DeepSeek's MaxVio; 0 when no tokens);
    dead_experts: experts that got no token.
    """
    c = jnp.asarray(counts, jnp.float32)
    mean = jnp.mean(c, axis=-1)
    safe_mean = jnp.where(mean > 0, mean, 1.0)
    c_max = jnp.max(c, axis=-1)
    return {
        "max_min_ratio": c_max / jnp.maximum(jnp.min(c, axis=-1), 1.0),
        "cv": jnp.where(mean > 0, jnp.std(c, axis=-1) / safe_mean, 0.0),
        "max_violation": jnp.where(mean > 0, (c_max - mean) / safe_mean, 0.0),
        "dead_experts": jnp.sum(c == 0, axis=-1).astype(jnp.int32),
    }


def expert_token_counts(
    expert_ids: jax.Array, num_experts: int, mask: jax.Array | None = None
) -> jax.Array:
    """Tokens routed to each expert: expert_ids [..., N, k] -> counts [..., E] (int32).

    `mask` (broadcastable to [..., N]) excludes padding tokens. Sum the result over microbatches;
    under jit on a sharded batch the sum already covers every device.
    """
    ids = jnp.asarray(expert_ids, jnp.int32)
    lead, (n, k) = ids.shape[:-2], ids.shape[-2:]
    w = jnp.ones(ids.shape[:-1], jnp.int32) if mask is None else jnp.asarray(mask, jnp.int32)
    w = jnp.broadcast_to(jnp.broadcast_to(w, (*lead, n))[..., None], ids.shape)
    # Scatter-add instead of a one-hot [N, k, E] tensor, which would not fit for real batches.
    count = lambda i, m: jnp.zeros((num_experts,), jnp.int32).at[i].add(m)
    flat = jax.vmap(count)(ids.reshape(-1, n * k), w.reshape(-1, n * k))
    return flat.reshape(*lead, num_experts)
