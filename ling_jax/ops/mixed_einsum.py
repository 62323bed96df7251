"""Two-operand einsum in a low-precision compute dtype with fp32 accumulation, forward *and* backward.

JAX's transpose of `einsum(..., preferred_element_type=f32)` multiplies the fp32 cotangent with the
bf16 operand, which XLA runs as an fp32 matmul (half the bf16 speed on CPU, and wasteful on TPU). The
custom VJP here casts the cotangent to the compute dtype and runs both backward matmuls bf16 x bf16
with fp32 accumulation, as Megatron and MaxText do. Gradients come back in each operand's own dtype,
so an fp32 master weight receives an fp32-accumulated gradient that is never rounded to bf16.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _split(equation: str) -> tuple[str, str, str] | None:
    """(lhs, rhs, out) index strings, or None when the backward einsums are not simple transposes."""
    if "->" not in equation or "..." in equation:
        return None
    inputs, out = equation.replace(" ", "").split("->")
    if inputs.count(",") != 1:
        return None
    lhs, rhs = inputs.split(",")
    for operand, other in ((lhs, rhs), (rhs, lhs)):
        # Every index must reappear elsewhere, else its gradient would need a broadcast.
        if len(set(operand)) != len(operand) or any(c not in other + out for c in operand):
            return None
    if len(set(out)) != len(out):
        return None
    return lhs, rhs, out


def mixed_einsum(equation: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """einsum(equation, x, w) on `dtype` operands with fp32 accumulation; returns fp32.

    For dtype float32 (or equations the custom VJP cannot transpose) it is the plain einsum.
    """
    dtype = jnp.dtype(dtype)
    parts = _split(equation)
    if dtype == jnp.float32 or parts is None:
        return jnp.einsum(
            equation, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32
        )
    return _mixed(parts, dtype, jnp.dtype(x.dtype), jnp.dtype(w.dtype), x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _mixed(parts, dtype, x_dtype, w_dtype, x, w):
    lhs, rhs, out = parts
    return jnp.einsum(
        f"{lhs},{rhs}->{out}", x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32
    )


def _mixed_fwd(parts, dtype, x_dtype, w_dtype, x, w):
    xc, wc = x.astype(dtype), w.astype(dtype)
    lhs, rhs, out = parts
    y = jnp.einsum(f"{lhs},{rhs}->{out}", xc, wc, preferred_element_type=jnp.float32)
    return y, (xc, wc)


def _mixed_bwd(parts, dtype, x_dtype, w_dtype, residuals, g):
    xc, wc = residuals
    lhs, rhs, out = parts
    g = g.astype(dtype)
    dx = jnp.einsum(f"{out},{rhs}->{lhs}", g, wc, preferred_element_type=jnp.float32)
    dw = jnp.einsum(f"{out},{lhs}->{rhs}", g, xc, preferred_element_type=jnp.float32)
    return dx.astype(x_dtype), dw.astype(w_dtype)


_mixed.defvjp(_mixed_fwd, _mixed_bwd)
