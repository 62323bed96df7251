"""RMSNorm with the upstream numerics (reference §2.2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
    """y = w * cast_in(x32 * rsqrt(mean(x32^2) + eps)): fp32 statistics, cast back before the weight."""

    def __init__(self, dim: int, *, eps: float, param_dtype=jnp.float32, axis_name: str = "embed"):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF multiplies in the weight's dtype after casting back to the input dtype.
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)
