"""Dropless routed-expert compute: the catalog of named backends (look them up here).

A backend maps (x [T,D], routing, expert weights) to the routed output [T,D] in fp32:
    y_t = Σ_k w_tk · SwiGLU_{e_tk}(x_t)
`dense` is the test reference; `ragged_dot` is XLA's grouped matmul (≈E× the work on XLA:CPU);
`blocked` is the fast CPU backend: rows sorted by expert into aligned blocks, one batched einsum;
`all_experts` runs every expert on every token (decode steps use it in place of `blocked`).
Backend modules register themselves in ling_jax.ops.backend_registry (which imports none of them);
this catalog imports each one after the registry: ep_transport (ep_all_to_all,
ep_ragged_all_to_all) and fp8_linear (blocked_fp8) here, the Pallas backends (pallas_fp8,
megablox; ling_jax.ops.pallas_backends) on the first lookup, so importing this imports no kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ling_jax.ops import (  # noqa: F401  (register)
    all_experts,
    backend_registry,
    ep_transport,
    fp8_linear,
)
from ling_jax.ops.backend_registry import Backend, ExpertWeights, register
from ling_jax.ops.blocked import blocked
from ling_jax.ops.mixed_einsum import mixed_einsum
from ling_jax.ops.sorted_compute import sorted_backend, swiglu_grouped

__all__ = ["Backend", "ExpertWeights", "blocked", "compute_with_drops", "dense", "get", "names",
           "register", "sorted_backend", "swiglu_grouped"]


def names() -> list[str]:
    _load_optional_backends()
    return backend_registry.names()


def get(name: str) -> Backend:
    _load_optional_backends()
    return backend_registry.get(name)


def _load_optional_backends() -> None:
    try:  # Pallas backends live in their own module so this one imports no kernels.
        import ling_jax.ops.pallas_backends  # noqa: F401
    except ImportError:
        pass


def compute_with_drops(backend: str) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Backend `backend` as fn(x_TD, idx_TK, weights_TK, w, *, dtype, block_size) ->
    (y [T, D] fp32, dropped (token, slot) rows, int32 scalar, global over the token shards).

    EP backends count the rows their capacity dropped; every other backend is dropless (0).
    """
    _load_optional_backends()  # an EP backend looks its local backend up when traced
    if backend in ep_transport.EP_BACKENDS:
        return functools.partial(ep_transport.ep_expert_compute,
                                 transport=ep_transport.EP_BACKENDS[backend])
    compute = get(backend)

    def dropless(x_TD, expert_idx_TK, weights_TK, w: ExpertWeights, *, dtype, block_size=0):
        y = compute(x_TD, expert_idx_TK, weights_TK, w, dtype=dtype, block_size=block_size)
        return y, jnp.zeros((), jnp.int32)

    return dropless


def _mm(eq: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    return mixed_einsum(eq, a, b, dtype).astype(dtype)


@register("dense")
def dense(x_TD, expert_idx_TK, weights_TK, w: ExpertWeights, *, dtype, block_size=0):
    """Every expert on every token, masked by the combine weights (the reference; E× the work).

    Runs in fp32 whatever `dtype` says: it is the reference, and XLA:CPU lacks some bf16→f32 dots.
    """
    del block_size, dtype
    dtype = jnp.float32
    num_tokens, num_experts = x_TD.shape[0], w.gate_EDF.shape[0]
    gate = _mm("td,edf->tef", x_TD, w.gate_EDF, dtype)
    up = _mm("td,edf->tef", x_TD, w.up_EDF, dtype)
    y_TED = _mm("tef,efd->ted", jax.nn.silu(gate) * up, w.down_EFD, dtype)
    combine_TE = (
        jnp.zeros((num_tokens, num_experts), jnp.float32)
        .at[jnp.arange(num_tokens)[:, None], expert_idx_TK]
        .add(weights_TK.astype(jnp.float32))
    )
    return jnp.einsum("ted,te->td", y_TED.astype(jnp.float32), combine_TE)


# Grouped-weight gradient: contract the (ragged) row axis of lhs and the cotangent per group.
_WGRAD_DIMS = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(([0], [0]), ([], [])), lhs_ragged_dimensions=[0],
    rhs_group_dimensions=[])


@jax.custom_vjp
def _ragged_dot(lhs, rhs, sizes):
    """ragged_dot in lhs's dtype with fp32 accumulation (the TPU MXU rounds its fp32 accumulator
    once: the same values as an fp32 result cast afterwards, without the fp32 [rows, D] buffer).
    Its backward, like ops.mixed_einsum, runs both grouped matmuls on the cotangent in that dtype
    with fp32 accumulation; the weight gradient stays fp32-accumulated. (Autodiff of an fp32-result
    ragged_dot would run them on an fp32 cotangent: at 16K tokens per chip each fp32 [rows, D]
    buffer is 5 GB.)"""
    return jax.lax.ragged_dot(lhs, rhs.astype(lhs.dtype), sizes, preferred_element_type=lhs.dtype)


def _ragged_dot_fwd(lhs, rhs, sizes):
    return _ragged_dot(lhs, rhs, sizes), (lhs, rhs, sizes)


def _ragged_dot_bwd(res, g_RF):
    lhs_RD, rhs_EDF, sizes = res
    g = g_RF.astype(lhs_RD.dtype)
    d_lhs = jax.lax.ragged_dot(g, jnp.swapaxes(rhs_EDF, 1, 2).astype(g.dtype), sizes,
                               preferred_element_type=lhs_RD.dtype)
    d_rhs = jax.lax.ragged_dot_general(lhs_RD, g, sizes, _WGRAD_DIMS,
                                       preferred_element_type=jnp.float32)
    return d_lhs, d_rhs.astype(rhs_EDF.dtype), None


_ragged_dot.defvjp(_ragged_dot_fwd, _ragged_dot_bwd)


register("ragged_dot")(sorted_backend(_ragged_dot))


register("blocked")(blocked)
