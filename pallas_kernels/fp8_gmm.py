"""`fp8_grouped_matmul`: a differentiable FP8 grouped matmul (Ling 2.0 blockwise recipe, TR §5.1).

Forward:  Y  = gmm(Q_row(X), Q_blk(W))                 X: [1,128] tiles along k, W: [128,128] blocks
Backward: dX = gmm(Q_row(dY), Q_blk(W)^T)              dY: [1,128] tiles along n (the contraction)
          dW = tgmm(Q_row(X^T), Q_col(dY))             X, dY: 128-row tiles along m (the contraction)

All operands are E4M3 (the recipe uses E4M3 both ways, no E5M2), scales fp32, accumulation f32.
W^T's quantisation is the transpose of W's (square blocks), so the backward re-quantises W from
the saved high-precision weight and lets `gmm(transpose_rhs=True)` contract it as stored (the
paper's "on-demand transpose", without even a transposed copy); nothing FP8 is kept between the
passes (the residuals are X and W, which are alive anyway).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.common import QUANT_BLOCK, round_up
from pallas_kernels.gmm import DEFAULT_TILING, gmm
from pallas_kernels.quantize import quantize_blocks, quantize_cols, quantize_rows
from pallas_kernels.tgmm import tgmm


class _Options(NamedTuple):
    """Static (hashable) options of one fp8_grouped_matmul call."""

    tiling: tuple[int, int, int]
    out_dtype: jnp.dtype
    interpret: bool
    pow2_scale: bool


def _backward_tilings(tiling: tuple[int, int, int]) -> tuple[tuple, tuple]:
    """dX contracts over n, so (tm, tn, tk); tgmm needs 128-multiple row tiles."""
    tm, tk, tn = tiling
    return (tm, tn, tk), (round_up(tm, QUANT_BLOCK), tk, tn)


def _forward(x, w, group_sizes, group_offset, opts: _Options) -> jax.Array:
    x_q, x_s = quantize_rows(x, QUANT_BLOCK, opts.pow2_scale)
    w_q, w_s = quantize_blocks(w, (QUANT_BLOCK, QUANT_BLOCK), opts.pow2_scale)
    return gmm(
        x_q, x_s, w_q, w_s, group_sizes, tiling=opts.tiling, out_dtype=opts.out_dtype,
        group_offset=group_offset, interpret=opts.interpret,
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fp8_gmm(x, w, group_sizes, group_offset, opts: _Options) -> jax.Array:
    return _forward(x, w, group_sizes, group_offset, opts)


def _fp8_gmm_fwd(x, w, group_sizes, group_offset, opts: _Options):
    return _forward(x, w, group_sizes, group_offset, opts), (x, w, group_sizes, group_offset)


def _extra_axes(cotangent_like: jax.Array, primal: jax.Array) -> tuple:
    """Mesh axes a shard_map cotangent varies over but its primal does not."""
    varying = jax.typeof(cotangent_like).manual_axis_type.varying
    return tuple(sorted(varying - jax.typeof(primal).manual_axis_type.varying))


def _sum_over_shards(cotangent: jax.Array, primal: jax.Array) -> jax.Array:
    """Under shard_map, an input that is the same on every shard (e.g. all tokens, with experts
    sharded) gets the sum of the shards' cotangents: the transpose of the implicit pvary. Each
    shard's dX only covers its own groups' rows, so the psum assembles the full dX."""
    axes = _extra_axes(cotangent, primal)
    if not axes:
        return cotangent.astype(primal.dtype)
    return jax.lax.psum(cotangent.astype(jnp.float32), axes).astype(primal.dtype)


def _fp8_gmm_bwd(opts: _Options, residuals, dy):
    x, w, group_sizes, group_offset = residuals
    dx_tiling, dw_tiling = _backward_tilings(opts.tiling)
    # dX = dY @ W^T per group: dY tiles along n; W's [128,128] blocks serve W^T as they are.
    dy_q, dy_s = quantize_rows(dy, QUANT_BLOCK, opts.pow2_scale)
    w_q, w_s = quantize_blocks(w, (QUANT_BLOCK, QUANT_BLOCK), opts.pow2_scale)
    dx = gmm(
        dy_q, dy_s, w_q, w_s, group_sizes, tiling=dx_tiling, out_dtype=jnp.float32,
        group_offset=group_offset, transpose_rhs=True, interpret=opts.interpret,
    )  # fmt: skip
    # dW = X^T @ dY per group: both quantised along m, the contraction of this product.
    x_t_q, x_t_s = quantize_rows(x.T, QUANT_BLOCK, opts.pow2_scale)
    dy_c_q, dy_c_s = quantize_cols(dy, QUANT_BLOCK, opts.pow2_scale)
    dw = tgmm(
        x_t_q, x_t_s, dy_c_q, dy_c_s, group_sizes, num_groups=w.shape[0], tiling=dw_tiling,
        out_dtype=jnp.float32, group_offset=group_offset, interpret=opts.interpret,
    )  # fmt: skip
    return _sum_over_shards(dx, x), _sum_over_shards(dw, w), None, None


_fp8_gmm.defvjp(_fp8_gmm_fwd, _fp8_gmm_bwd)


def fp8_grouped_matmul(
    x: jax.Array,
    w: jax.Array,
    group_sizes: jax.Array,
    *,
    tiling: tuple[int, int, int] = DEFAULT_TILING,
    out_dtype: jnp.dtype | None = None,
    interpret: bool = False,
    pow2_scale: bool = False,
    group_offset: jax.Array | None = None,
) -> jax.Array:
    """Y[rows of g] = X[rows of g] @ W[g] in blockwise FP8, differentiable in x and w.

    Args:
      x: [m, k] (bf16/f32), rows sorted by group.
      w: [G_local, k, n] expert weights.
      group_sizes: [G_total] int32 rows per group; rows past the last group, or of groups other
        shards own, come out (and get gradients) as zeros.
      tiling: forward (tm, tk, tn); the backward uses (tm, tn, tk) for dX and
        (round_up(tm, 128), tk, tn) for dW.
      out_dtype: output dtype (default x.dtype).
      pow2_scale: round every scale up to a power of two (UE8M0).
      group_offset: () int32, first group of this expert-parallel shard.
    """
    if x.ndim != 2 or w.ndim != 3 or x.shape[1] != w.shape[1]:
        raise ValueError(f"fp8_grouped_matmul wants x [m, k] and w [G, k, n], got {x.shape}, {w.shape}")
    opts = _Options(
        tiling=tuple(tiling),
        out_dtype=jnp.dtype(x.dtype if out_dtype is None else out_dtype),
        interpret=bool(interpret),
        pow2_scale=bool(pow2_scale),
    )
    offset = jnp.zeros((), jnp.int32) if group_offset is None else jnp.asarray(group_offset, jnp.int32)
    return _fp8_gmm(x, w, group_sizes, offset, opts)
