"""The `all_experts` expert-compute backend: every expert on every token, then the top-k picked out.

For a few tokens (decoding: a batch of 32 rows is 256 (token, slot) rows over 64 experts) nearly
every expert is hit anyway, so the weights are read once per expert whichever way the rows are
laid out. Running each expert on all T tokens costs E/K times the routed FLOPs but needs no
dispatch plan, no weight gather and no per-block matmuls; XLA:CPU packs each expert's weights
once instead of once per block. The values are the blocked backend's bit for bit: the same
compute-dtype gate / up / down products with fp32 accumulation, the same fp32 combine of the K
chosen rows. Measured on bench-mini shapes (D 512, F 256, E 64, K 8, bf16, 2-core CPU, per
layer): T = 32: 5.9 ms vs 11.9 ms blocked; T = 128: 16 vs 23 ms; T = 256: 47 vs 40 ms, so
`preferred` picks it while T·K <= 16·E.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ling_jax.ops.backend_registry import ExpertWeights, register

ROWS_PER_EXPERT = 16  # all_experts while T·K <= ROWS_PER_EXPERT · E (measured crossover above)


def preferred(num_tokens: int, top_k: int, num_experts: int) -> bool:
    """True when running every expert on every token is the cheaper layout (static shapes)."""
    return num_tokens * top_k <= ROWS_PER_EXPERT * num_experts


def _mm(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


@register("all_experts")
def all_experts(x_TD, expert_idx_TK, weights_TK, w: ExpertWeights, *, dtype, block_size=0):
    """Σ_k w_tk · SwiGLU_{e_tk}(x_t) (fp32 [T, D]) from all E experts' outputs on every token."""
    del block_size
    x = x_TD.astype(dtype)
    # Expert-major [E, T, .] so the down projection is a dot batched on its leading axis (XLA:CPU
    # has no bf16 x bf16 -> f32 kernel for a batch axis in the middle).
    x_ETD = jnp.broadcast_to(x, (w.gate_EDF.shape[0], *x.shape))
    gate = _mm("etd,edf->etf", x_ETD, w.gate_EDF.astype(dtype)).astype(dtype)
    up = _mm("etd,edf->etf", x_ETD, w.up_EDF.astype(dtype)).astype(dtype)
    h_ETF = jax.lax.optimization_barrier(jax.nn.silu(gate) * up)
    y_ETD = _mm("etf,efd->etd", h_ETF, w.down_EFD.astype(dtype)).astype(dtype)
    tokens_TK = jnp.broadcast_to(jnp.arange(x.shape[0])[:, None], expert_idx_TK.shape)
    rows = y_ETD[expert_idx_TK, tokens_TK].astype(jnp.float32)  # [T, K, D]
    return jnp.einsum("tkd,tk->td", rows, weights_TK.astype(jnp.float32))
