"""Reference implementations the kernels are tested against.

* NumPy float64 versions of the blockwise quantisers and of the quantise -> matmul -> dequantise
  math (`np_*`). The quantiser's fp32 steps (scale = amax * fp32(1/448), r = 1/scale,
  x * r) are rounded to fp32 exactly as the JAX quantiser does (float64 has enough bits that
  computing in float64 and rounding once equals the fp32 operation), so the FP8 codes and scales
  match bit for bit; everything after that is float64.
* Unquantised JAX grouped matmuls (`gmm_reference`, `tgmm_reference`), differentiable, for
  FP8-level error checks and `jax.grad` comparisons.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

FP8_MAX = 448.0
AMAX_FLOOR = np.float32(1e-12)
BLOCK = 128


def _np_scale(amax: np.ndarray, pow2_scale: bool) -> np.ndarray:
    # fp32 product with the fp32 constant 1/448 (the kernel's definition, exact in float64).
    amax32 = np.maximum(amax.astype(np.float32), AMAX_FLOOR)
    scale = (amax32.astype(np.float64) * np.float64(np.float32(1.0 / FP8_MAX))).astype(np.float32)
    if pow2_scale:
        scale = np.exp2(np.ceil(np.log2(scale.astype(np.float64)))).astype(np.float32)
    return scale


def _np_reciprocal(scale: np.ndarray) -> np.ndarray:
    """fp32 1/scale (the quantiser multiplies by it), as float64."""
    return (1.0 / scale.astype(np.float64)).astype(np.float32).astype(np.float64)


def _np_cast(scaled: np.ndarray) -> np.ndarray:
    """E4M3 codes (as float64) of x * (1/scale): fp32 rounding, saturation, RNE cast."""
    q32 = np.clip(scaled.astype(np.float32), -FP8_MAX, FP8_MAX)
    return q32.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)


def np_quantize_rows(
    x: np.ndarray, pow2_scale: bool = False, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """[1, block] tiles along the last axis of a 2-D array -> (codes float64 [r, c], scale [r, cb])."""
    x = np.asarray(x, np.float32).astype(np.float64)
    r, c = x.shape
    cb = -(-c // block)
    amax = np.stack([np.abs(x[:, j * block : (j + 1) * block]).max(axis=1) for j in range(cb)], 1)
    scale = _np_scale(amax, pow2_scale)
    s_full = np.repeat(_np_reciprocal(scale), block, axis=1)[:, :c]
    return _np_cast(x * s_full), scale


def np_quantize_cols(
    x: np.ndarray, pow2_scale: bool = False, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """[block, 1] tiles along axis 0 -> (codes [r, c], scale [rb, c])."""
    q_t, s_t = np_quantize_rows(np.asarray(x).T, pow2_scale, block)
    return q_t.T, s_t.T


def np_quantize_blocks(
    w: np.ndarray, pow2_scale: bool = False, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """[block, block] tiles of a 2-D or 3-D (leading group axis) array -> (codes, scale)."""
    w = np.asarray(w, np.float32).astype(np.float64)
    if w.ndim == 3:
        pairs = [np_quantize_blocks(wg, pow2_scale, block) for wg in w]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    r, c = w.shape
    rb, cb = -(-r // block), -(-c // block)
    amax = np.zeros((rb, cb))
    for i in range(rb):
        for j in range(cb):
            amax[i, j] = np.abs(w[i * block : (i + 1) * block, j * block : (j + 1) * block]).max()
    scale = _np_scale(amax, pow2_scale)
    s_full = np.kron(_np_reciprocal(scale), np.ones((block, block)))[:r, :c]
    return _np_cast(w * s_full), scale


def np_dequantize_rows(q: np.ndarray, scale: np.ndarray, block: int = BLOCK) -> np.ndarray:
    return q * np.repeat(scale.astype(np.float64), block, axis=-1)[..., : q.shape[-1]]


def np_dequantize_blocks(q: np.ndarray, scale: np.ndarray, block: int = BLOCK) -> np.ndarray:
    s = np.repeat(np.repeat(scale.astype(np.float64), block, axis=-2), block, axis=-1)
    return q * s[..., : q.shape[-2], : q.shape[-1]]


def _np_group_rows(group_sizes, m: int, group_offset: int, num_groups: int):
    ends = np.minimum(np.cumsum(np.asarray(group_sizes, np.int64)), m)
    starts = np.concatenate([[0], ends[:-1]])
    for g in range(num_groups):
        yield g, slice(int(starts[group_offset + g]), int(ends[group_offset + g]))


def np_gmm(lhs: np.ndarray, rhs: np.ndarray, group_sizes, group_offset: int = 0) -> np.ndarray:
    """float64 grouped matmul; rows of non-local groups (and past the last group) are zero."""
    lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
    out = np.zeros((lhs.shape[0], rhs.shape[2]))
    for g, rows in _np_group_rows(group_sizes, lhs.shape[0], group_offset, rhs.shape[0]):
        out[rows] = lhs[rows] @ rhs[g]
    return out


def np_tgmm(
    lhs: np.ndarray, dout: np.ndarray, group_sizes, num_groups: int, group_offset: int = 0
) -> np.ndarray:
    """float64 per-group lhs[rows]^T @ dout[rows] -> [num_groups, k, n]."""
    lhs, dout = np.asarray(lhs, np.float64), np.asarray(dout, np.float64)
    out = np.zeros((num_groups, lhs.shape[1], dout.shape[1]))
    for g, rows in _np_group_rows(group_sizes, lhs.shape[0], group_offset, num_groups):
        out[g] = lhs[rows].T @ dout[rows]
    return out


def np_fp8_gmm(x, w, group_sizes, group_offset: int = 0, pow2_scale: bool = False) -> np.ndarray:
    """Forward of the FP8 recipe in float64: X in [1,128] tiles along k, W in [128,128] blocks."""
    xd = np_dequantize_rows(*np_quantize_rows(x, pow2_scale))
    wd = np_dequantize_blocks(*np_quantize_blocks(w, pow2_scale))
    return np_gmm(xd, wd, group_sizes, group_offset)


def np_fp8_gmm_grads(
    x, w, group_sizes, dy, group_offset: int = 0, pow2_scale: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Backward of the FP8 recipe in float64: dX = Q(dY) Q(W)^T with dY in [1,128] tiles along n;
    dW = Q(X)^T Q(dY) with X and dY in [128,1] tiles along m (the contraction of dW)."""
    dy_rows = np_dequantize_rows(*np_quantize_rows(dy, pow2_scale))
    wd = np_dequantize_blocks(*np_quantize_blocks(w, pow2_scale))
    dx = np_gmm(dy_rows, np.swapaxes(wd, 1, 2), group_sizes, group_offset)
    x_cols = np_dequantize_rows(*np_quantize_rows(np.asarray(x).T, pow2_scale)).T
    dy_cols = np_dequantize_rows(*np_quantize_rows(np.asarray(dy).T, pow2_scale)).T
    dw = np_tgmm(x_cols, dy_cols, group_sizes, w.shape[0], group_offset)
    return dx, dw


def _row_groups(group_sizes: jax.Array, m: int, group_offset, num_groups: int) -> jax.Array:
    """Local group index of every row, or -1 for rows outside the local groups."""
    ends = jnp.cumsum(group_sizes)
    gid = jnp.searchsorted(ends, jnp.arange(m), side="right") - jnp.asarray(group_offset)
    return jnp.where((gid >= 0) & (gid < num_groups), gid, -1)


def gmm_reference(x: jax.Array, w: jax.Array, group_sizes: jax.Array, group_offset=0) -> jax.Array:
    """Unquantised grouped matmul in f32 (plain einsum + one-hot select), differentiable."""
    gid = _row_groups(group_sizes, x.shape[0], group_offset, w.shape[0])
    onehot = jax.nn.one_hot(gid, w.shape[0], dtype=jnp.float32)  # rows with gid -1 are all-zero
    per_group = jnp.einsum("mk,gkn->gmn", x.astype(jnp.float32), w.astype(jnp.float32))
    return jnp.einsum("mg,gmn->mn", onehot, per_group)


def tgmm_reference(
    x: jax.Array, dy: jax.Array, group_sizes: jax.Array, num_groups: int, group_offset=0
) -> jax.Array:
    """Unquantised per-group x^T dy -> [num_groups, k, n] in f32."""
    gid = _row_groups(group_sizes, x.shape[0], group_offset, num_groups)
    onehot = jax.nn.one_hot(gid, num_groups, dtype=jnp.float32)
    return jnp.einsum("mg,mk,mn->gkn", onehot, x.astype(jnp.float32), dy.astype(jnp.float32))
