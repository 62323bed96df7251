"""Parameter creation with logical axis names, and the one einsum every projection uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ling_jax.ops.fp8_linear import fp8_einsum
from ling_jax.ops.mixed_einsum import mixed_einsum

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# quant name -> einsum(equation, x, kernel, dtype); None is the plain einsum below.
QUANTIZED_PROJECTIONS = {"fp8": fp8_einsum}


def dtype_of(name: str):
    return DTYPES[name]


def param(
    rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], *, std: float, dtype
) -> nnx.Param:
    """A normal(0, std) weight tagged with its logical axis names (used by parallel/ rules)."""
    assert len(shape) == len(axes), (shape, axes)
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes)


def project(equation: str, x: jax.Array, kernel: jax.Array, dtype, quant: str | None = None) -> jax.Array:
    """einsum in the compute dtype with fp32 accumulation, backward included (ops.mixed_einsum);
    quant="fp8" runs it as blockwise FP8 (ling_jax.ops.fp8_linear, reference §5)."""
    if quant is not None:
        return QUANTIZED_PROJECTIONS[quant](equation, x, kernel, dtype)
    return mixed_einsum(equation, x, kernel, dtype).astype(dtype)
