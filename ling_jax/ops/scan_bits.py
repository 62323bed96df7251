"""Scanning bf16 arrays as their raw bits, for scans whose inputs take no gradient.

XLA:CPU's bf16 normalisation rewrites a bf16 dynamic-slice as an f32 convert and slice; loop
invariant code motion then hoists the convert out of a `lax.scan`, so every call converts the
whole stacked input (each layer's weights, the KV cache) to f32: 6 bytes moved per element where
2 are read. Scanning the uint16 bits and bitcasting back inside the body is exact and keeps the
slice in bf16. Bitcasts have no derivative: use it only where no gradient flows (inference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _is_bf16(dtype) -> bool:
    return jnp.dtype(dtype) == jnp.bfloat16


def dtypes_of(tree):
    """The tree's leaf dtypes (what `from_bits` restores)."""
    return jax.tree.map(lambda a: jnp.dtype(a.dtype), tree)


def to_bits(tree):
    """bf16 leaves as uint16 bit patterns; other leaves unchanged."""
    return jax.tree.map(
        lambda a: jax.lax.bitcast_convert_type(a, jnp.uint16) if _is_bf16(a.dtype) else a, tree)


def from_bits(tree, dtypes):
    """Inverse of `to_bits` given the original `dtypes_of` tree."""
    return jax.tree.map(
        lambda a, d: jax.lax.bitcast_convert_type(a, d) if _is_bf16(d) else a, tree, dtypes)
