"""Small helpers shared by the FP8 grouped-matmul kernels (validation, padding, in-kernel math)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import ManualAxisType

QUANT_BLOCK = 128  # the blockwise-scaling tile (TR §5.1): [1,128] activations, [128,128] weights
FP8_TYPES = (jnp.dtype(jnp.float8_e4m3fn), jnp.dtype(jnp.float8_e5m2))
# E4M3/E5M2 values are exact in bf16, so the MXU sees the same numbers at bf16 rate on chips
# without native FP8 matmul; HBM traffic stays FP8.
MXU_DTYPE = jnp.bfloat16


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def check_fp8(name: str, x: jax.Array) -> None:
    if jnp.dtype(x.dtype) not in FP8_TYPES:
        raise ValueError(f"{name} must be float8_e4m3fn or float8_e5m2 (quantise it first), got {x.dtype}")


def check_shape(name: str, x: jax.Array, expected: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(x.shape)}")


def check_group_sizes(group_sizes: jax.Array, num_local: int) -> None:
    if group_sizes.ndim != 1 or group_sizes.dtype != jnp.int32:
        raise ValueError(
            f"group_sizes must be a 1-D int32 array, got {group_sizes.dtype}{list(group_sizes.shape)}"
        )
    if group_sizes.shape[0] < num_local:
        raise ValueError(
            f"group_sizes has {group_sizes.shape[0]} groups but the weights hold {num_local}; "
            "pass all groups' sizes and select the local ones with group_offset"
        )


def check_tiling(tiling: tuple[int, int, int], row_multiple: int) -> tuple[int, int, int]:
    """tm a multiple of `row_multiple`; tk, tn multiples of 128 (the FP8 scale block)."""
    if len(tiling) != 3 or not all(isinstance(t, int) and t > 0 for t in tiling):
        raise ValueError(f"tiling must be three positive ints (tm, tk, tn), got {tiling!r}")
    tm, tk, tn = tiling
    if tm % row_multiple or tk % QUANT_BLOCK or tn % QUANT_BLOCK:
        raise ValueError(
            f"tiling {tiling!r}: tm must be a multiple of {row_multiple} and tk, tn multiples of "
            f"{QUANT_BLOCK}"
        )
    return tm, tk, tn


def pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Zero-pad `axis` of x up to `size` (no-op when already that size)."""
    axis = axis % x.ndim
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def select_column(block: jax.Array, index: jax.Array) -> jax.Array:
    """block[:, index] as a [rows, 1] column, by a masked lane sum (exact; avoids a dynamic lane
    slice). An out-of-range index gives zeros."""
    lanes = jax.lax.broadcasted_iota(jnp.int32, block.shape, 1)
    return jnp.sum(jnp.where(lanes == index, block, 0.0), axis=1, keepdims=True)


def out_struct(shape: tuple[int, ...], dtype, *operands: jax.Array) -> jax.ShapeDtypeStruct:
    """pallas_call output type that varies over the union of the operands' manual mesh axes, so
    the kernels also work inside `jax.shard_map` with check_vma=True (e.g. expert parallelism)."""
    varying = frozenset().union(*(jax.typeof(x).manual_axis_type.varying for x in operands))
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=ManualAxisType(varying=varying))
