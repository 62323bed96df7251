"""The `tiered` expert-compute backend (forward only): an expert-major tier plus overflow blocks.

XLA:CPU runs a batched matmul whose per-expert weights are the operand itself ([E, D, F]) at
nearly the speed of one flat matmul, but `blocked`'s per-block weight copies (W[owner], a gather)
and its many small blocks cost two to three times that. Here the first C rows of every expert's
sorted group go to an [E, C] tier multiplied by the weights in place, C = the mean group R / E
rounded up to 8; the rows past C (a few percent when routing is balanced) go to expert-aligned
overflow blocks of `b` rows, in chunks that run under `lax.cond` only when they hold rows. Each
row's products are the same compute-dtype operands with fp32 accumulation, and the K rows of a
token are combined in the same fp32 order as `blocked`, so in bf16 the values are `blocked`'s bit
for bit (tested; in fp32 XLA:CPU's matmul sums depend on the row count: ~1e-5 apart).

It has no hand-written VJP (autodiff of the overflow chunks would keep weight copies as
residuals): the model uses it for bf16 inference only (`MoE(..., inference=True)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ling_jax.ops import dispatch
from ling_jax.ops.backend_registry import ExpertWeights, register

OVERFLOW_BLOCK = 32  # rows per overflow block
OVERFLOW_CHUNK = 8  # overflow blocks per conditionally skipped chunk


def _mm(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def tier_capacity(num_rows: int, num_experts: int) -> int:
    """Rows per expert in the expert-major tier: the mean group, rounded up to 8."""
    mean = -(-num_rows // num_experts)
    return max(8, (mean + 7) // 8 * 8)


def _swiglu(x_NBD, wg_NDF, wu_NDF, wd_NFD, dtype):
    gate = _mm("nbd,ndf->nbf", x_NBD, wg_NDF).astype(dtype)
    up = _mm("nbd,ndf->nbf", x_NBD, wu_NDF).astype(dtype)
    return _mm("nbf,nfd->nbd", jax.nn.silu(gate) * up, wd_NFD).astype(dtype)


@register("tiered")
def tiered(x_TD, expert_idx_TK, weights_TK, w: ExpertWeights, *, dtype, block_size=0):
    """Dropless routed SwiGLU, Σ_k w_tk · SwiGLU_{e_tk}(x_t) (fp32 [T, D]); see the module doc.

    block_size: rows per overflow block (0: OVERFLOW_BLOCK)."""
    num_tokens, top_k = expert_idx_TK.shape
    num_experts, hidden = w.gate_EDF.shape[0], x_TD.shape[1]
    num_rows = num_tokens * top_k
    cap, b = tier_capacity(num_rows, num_experts), block_size or OVERFLOW_BLOCK
    plan = dispatch.sort_by_expert(expert_idx_TK, num_experts)
    sizes, expert = plan.group_sizes, plan.sorted_expert
    rank = jnp.arange(num_rows, dtype=jnp.int32) - (jnp.cumsum(sizes) - sizes)[expert]
    # Overflow rows (rank >= cap) in expert-aligned blocks of b after the tier's E*C slots.
    over = jnp.maximum(sizes - cap, 0)
    padded = (over + b - 1) // b * b
    over_start = jnp.cumsum(padded) - padded
    num_blocks = -(-max(num_rows - cap, 0) // b) + num_experts  # >= sum_e ceil(over_e / b)
    tier_slots = num_experts * cap
    dest = jnp.where(rank < cap, expert * cap + rank,
                     tier_slots + over_start[expert] + rank - cap).astype(jnp.int32)
    slots = tier_slots + num_blocks * b
    slot_token = jnp.full((slots,), num_tokens, jnp.int32).at[dest].set(plan.order // top_k)
    row_slot = jnp.zeros((num_rows,), jnp.int32).at[plan.order].set(dest)
    x = jnp.concatenate([x_TD.astype(dtype), jnp.zeros((1, hidden), dtype)])[slot_token]
    wg, wu, wd = (jnp.asarray(a, dtype) for a in w)
    y_tier = _swiglu(x[:tier_slots].reshape(num_experts, cap, hidden), wg, wu, wd, dtype)
    pieces = [y_tier.reshape(tier_slots, hidden)]
    ends = jnp.cumsum(padded)
    used = ends[-1] // b
    owner = jnp.minimum(jnp.searchsorted(ends, jnp.arange(num_blocks) * b, side="right"),
                        num_experts - 1).astype(jnp.int32)
    x_over = x[tier_slots:].reshape(num_blocks, b, hidden)
    for start in range(0, num_blocks, OVERFLOW_CHUNK):
        stop = min(start + OVERFLOW_CHUNK, num_blocks)

        def chunk(xs, own):
            return _swiglu(xs, wg[own], wu[own], wd[own], dtype).reshape(-1, hidden)

        def empty(xs, own):
            return jnp.zeros((xs.shape[0] * b, hidden), dtype)

        pieces.append(jax.lax.cond(start < used, chunk, empty, x_over[start:stop],
                                   owner[start:stop]))
    y = jnp.concatenate(pieces)
    rows = y[row_slot].reshape(num_tokens, top_k, hidden).astype(jnp.float32)
    return jnp.einsum("tkd,tk->td", rows, weights_TK.astype(jnp.float32))
