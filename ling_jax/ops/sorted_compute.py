"""SwiGLU experts on rows sorted by expert, through any grouped matmul (ragged_dot, Pallas)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from ling_jax.ops import dispatch
from ling_jax.ops.backend_registry import Backend, ExpertWeights


def swiglu_grouped(x_RD, group_sizes, w: ExpertWeights, gmm: Callable, dtype) -> jax.Array:
    """SwiGLU on rows sorted by expert through a grouped-matmul function gmm(lhs, rhs, sizes)."""
    gate = gmm(x_RD.astype(dtype), w.gate_EDF.astype(dtype), group_sizes).astype(dtype)
    up = gmm(x_RD.astype(dtype), w.up_EDF.astype(dtype), group_sizes).astype(dtype)
    return gmm(jax.nn.silu(gate) * up, w.down_EFD.astype(dtype), group_sizes).astype(dtype)


def sorted_backend(gmm: Callable) -> Backend:
    """A backend from any grouped matmul over expert-sorted rows (ragged_dot, Pallas kernels)."""

    def run(x_TD, expert_idx_TK, weights_TK, w: ExpertWeights, *, dtype, block_size=0):
        del block_size
        plan = dispatch.sort_by_expert(expert_idx_TK, w.gate_EDF.shape[0])
        x_RD = dispatch.gather_sorted(x_TD, plan, expert_idx_TK.shape[1])
        y_RD = swiglu_grouped(x_RD, plan.group_sizes, w, gmm, dtype)
        return dispatch.combine_sorted(y_RD, plan, weights_TK)

    return run
