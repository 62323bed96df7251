"""Blockwise FP8 (E4M3) quantisation with fp32 scales, as in the Ling 2.0 recipe (TR §5.1).

Activations and gradients use [1, 128] tiles along the contraction dimension (`quantize_rows`, or
`quantize_cols` for [128, 1] tiles when the contraction runs down the columns); weights use
[128, 128] blocks (`quantize_blocks`). Every tile gets one fp32 scale `s = amax / 448` so that
`x ≈ q * s` with `q = clip(x * (1/s), ±448).astype(float8_e4m3fn)`; the clip matters because XLA casts
overflow to NaN, not to the largest finite value. With `pow2_scale=True` the scale is rounded up
to a power of two (UE8M0 style), which makes `x * (1/s)` exact before the cast.

Dimensions that are not a multiple of the block are padded internally; `q` keeps the input shape
and the scale has `ceil(dim / block)` entries along each blocked dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FP8_DTYPE = jnp.float8_e4m3fn
FP8_MAX = 448.0
# Floor on a tile's amax: only guards all-zero tiles (a floor like 1e-4 would flush whole tiles of
# small gradients to zero); the scale amax / 448 stays a normal fp32 number.
AMAX_FLOOR = 1e-12


def compute_scale(amax: jax.Array, pow2_scale: bool = False) -> jax.Array:
    """fp32 scale for a tile with absolute maximum `amax` (power of two rounded up if asked)."""
    # Multiply by the fp32 constant 1/448 explicitly: XLA rewrites a division by a constant into
    # this anyway, and spelling it out keeps the scale bit-identical across backends and references.
    scale = jnp.maximum(amax.astype(jnp.float32), AMAX_FLOOR) * jnp.float32(1.0 / FP8_MAX)
    if not pow2_scale:
        return scale
    mantissa, exponent = jnp.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    exponent = jnp.where(mantissa == 0.5, exponent - 1, exponent)  # exact powers of two stay
    return jnp.ldexp(jnp.ones_like(scale), exponent)


def saturating_cast(x_scaled: jax.Array) -> jax.Array:
    """Clip to the E4M3 range, then cast (a plain cast would turn overflow into NaN)."""
    return jnp.clip(x_scaled, -FP8_MAX, FP8_MAX).astype(FP8_DTYPE)


def _reciprocal(scale: jax.Array) -> jax.Array:
    """1 / scale, once per tile. The quantiser is defined as x * (1/s), not x / s: XLA rewrites a
    division by a broadcast into exactly this, so spelling it out keeps references bit-exact."""
    return jnp.float32(1.0) / scale


def _check_block(block: int, name: str) -> None:
    if not isinstance(block, int) or block <= 0:
        raise ValueError(f"{name} must be a positive int, got {block!r}")


def _pad_to(x: jax.Array, axis: int, block: int) -> jax.Array:
    pad = -x.shape[axis] % block
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def _quantize_along(x: jax.Array, axis: int, block: int, pow2_scale: bool) -> tuple[jax.Array, jax.Array]:
    """Quantise with 1-D tiles of `block` elements along `axis` (which must be -1 or -2)."""
    _check_block(block, "block")
    size = x.shape[axis]
    x_p = _pad_to(x.astype(jnp.float32), axis, block)
    nb = x_p.shape[axis] // block
    if axis == -1:
        tiles = x_p.reshape(*x_p.shape[:-1], nb, block)
        scale = compute_scale(jnp.max(jnp.abs(tiles), axis=-1), pow2_scale)
        q = saturating_cast(tiles * _reciprocal(scale)[..., None]).reshape(x_p.shape)[..., :size]
    else:
        tiles = x_p.reshape(*x_p.shape[:-2], nb, block, x_p.shape[-1])
        scale = compute_scale(jnp.max(jnp.abs(tiles), axis=-2), pow2_scale)
        q = saturating_cast(tiles * _reciprocal(scale)[..., None, :])
        q = q.reshape(x_p.shape)[..., :size, :]
    return q, scale


def quantize_rows(x: jax.Array, block: int = 128, pow2_scale: bool = False) -> tuple[jax.Array, jax.Array]:
    """[1, block] tiles along the last axis: x [..., k] -> (q [..., k] e4m3, scale [..., ceil(k/block)])."""
    return _quantize_along(x, -1, block, pow2_scale)


def quantize_cols(x: jax.Array, block: int = 128, pow2_scale: bool = False) -> tuple[jax.Array, jax.Array]:
    """[block, 1] tiles along axis -2: x [..., m, n] -> (q [..., m, n], scale [..., ceil(m/block), n])."""
    if x.ndim < 2:
        raise ValueError(f"quantize_cols needs a rank >= 2 input, got shape {x.shape}")
    return _quantize_along(x, -2, block, pow2_scale)


def quantize_blocks(
    w: jax.Array, block: tuple[int, int] = (128, 128), pow2_scale: bool = False
) -> tuple[jax.Array, jax.Array]:
    """[br, bc] blocks over the last two axes: w [..., r, c] -> (q, scale [..., ceil(r/br), ceil(c/bc)])."""
    if w.ndim < 2:
        raise ValueError(f"quantize_blocks needs a rank >= 2 input, got shape {w.shape}")
    br, bc = block
    _check_block(br, "block[0]")
    _check_block(bc, "block[1]")
    r, c = w.shape[-2:]
    w_p = _pad_to(_pad_to(w.astype(jnp.float32), -2, br), -1, bc)
    rb, cb = w_p.shape[-2] // br, w_p.shape[-1] // bc
    tiles = w_p.reshape(*w_p.shape[:-2], rb, br, cb, bc)
    scale = compute_scale(jnp.max(jnp.abs(tiles), axis=(-3, -1)), pow2_scale)
    q = saturating_cast(tiles * _reciprocal(scale)[..., :, None, :, None]).reshape(w_p.shape)
    return q[..., :r, :c], scale


def _expand(scale: jax.Array, axis: int, block: int, size: int) -> jax.Array:
    """Repeat each scale `block` times along `axis` and cut to `size` (drops the padding)."""
    return jax.lax.slice_in_dim(jnp.repeat(scale, block, axis=axis), 0, size, axis=axis)


def dequantize_rows(
    q: jax.Array, scale: jax.Array, block: int = 128, dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """Inverse of `quantize_rows` (up to the rounding of the cast)."""
    return (q.astype(jnp.float32) * _expand(scale, -1, block, q.shape[-1])).astype(dtype)


def dequantize_cols(
    q: jax.Array, scale: jax.Array, block: int = 128, dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """Inverse of `quantize_cols`."""
    return (q.astype(jnp.float32) * _expand(scale, -2, block, q.shape[-2])).astype(dtype)


def dequantize_blocks(
    q: jax.Array,
    scale: jax.Array,
    block: tuple[int, int] = (128, 128),
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Inverse of `quantize_blocks`."""
    s = _expand(_expand(scale, -2, block[0], q.shape[-2]), -1, block[1], q.shape[-1])
    return (q.astype(jnp.float32) * s).astype(dtype)
