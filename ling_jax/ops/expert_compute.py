"""Dropless routed-expert compute behind a registry of named backends.

A backend maps (x [T,D], routing, expert weights) to the routed output [T,D] in fp32:
    y_t = Σ_k w_tk · SwiGLU_{e_tk}(x_t)
`dense` is the test reference; `ragged_dot` is XLA's grouped matmul (≈E× the work on XLA:CPU);
`blocked` is the fast CPU backend: rows sorted by expert into aligned blocks, one batched einsum.
Pallas backends (pallas_fp8, megablox) register themselves from ling_jax.ops.pallas_backends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ling_jax.ops import dispatch
from ling_jax.ops.blocked import blocked
from ling_jax.ops.mixed_einsum import mixed_einsum


class ExpertWeights(NamedTuple):
    gate_EDF: jax.Array
    up_EDF: jax.Array
    down_EFD: jax.Array


Backend = Callable[..., jax.Array]
_REGISTRY: dict[str, Backend] = {}


def register(name: str) -> Callable[[Backend], Backend]:
    def wrap(fn: Backend) -> Backend:
        _REGISTRY[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    _load_optional_backends()
    return sorted(_REGISTRY)


def get(name: str) -> Backend:
    _load_optional_backends()
    if name not in _REGISTRY:
        raise ValueError(f"unknown MoE backend {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _load_optional_backends() -> None:
    import ling_jax.ops.ep_transport  # noqa: F401  (registers ep_all_to_all, ep_ragged_all_to_all)
    import ling_jax.ops.fp8_linear  # noqa: F401  (registers blocked_fp8)

    try:  # Pallas backends live in their own module so this one imports no kernels.
        import ling_jax.ops.pallas_backends  # noqa: F401
    except ImportError:
        pass
    import ling_jax.ops.ep_transport  # noqa: F401  (expert-parallel backends register themselves)


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


def _ragged_dot(lhs, rhs, sizes):
    return jax.lax.ragged_dot(lhs, rhs, sizes, preferred_element_type=jnp.float32)


register("ragged_dot")(sorted_backend(_ragged_dot))


register("blocked")(blocked)
