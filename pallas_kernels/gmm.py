"""FP8 grouped matmul `gmm`: out[rows of group g] = lhs[rows of g] @ rhs[g], blockwise-scaled.

lhs [m, k] is FP8 with [1, 128] scales along k (`quantize_rows`), rhs [G, k, n] is FP8 with
[128, 128] block scales (`quantize_blocks`). Inside the kernel every 128-deep slice of a k tile
is multiplied on the MXU with f32 accumulation, then scaled by (row scale) x (weight-block scale)
and added to a VMEM f32 accumulator: the scales are applied per tile, never to whole tensors.

Grid = (n tiles, visits, k tiles), see `schedule.py`: a row tile that holds a group boundary is
visited once per group, and each visit stores only the rows of its group. Rows that belong to no
local group (other expert-parallel shards via `group_offset`, or past sum(group_sizes)) are
written as zeros. m need not be a multiple of tm (the partial last tile is masked); k and n are
padded to the tile sizes here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import (
    MXU_DTYPE,
    QUANT_BLOCK,
    check_fp8,
    check_group_sizes,
    check_shape,
    check_tiling,
    out_struct,
    pad_axis,
    round_up,
    select_column,
)
from pallas_kernels.schedule import Schedule, cdiv, gmm_schedule
from pallas_kernels.tgmm import tgmm

__all__ = ["gmm", "tgmm", "DEFAULT_TILING"]

DEFAULT_TILING = (256, 512, 512)


def _gmm_kernel(
    seg_start, seg_end, visit_seg, visit_tile, num_visits,  # scalar prefetch (SMEM)
    lhs_ref, lhs_scale_ref, rhs_ref, rhs_scale_ref,  # VMEM input blocks
    out_ref,  # VMEM output block
    acc_ref,  # VMEM f32 scratch
    *, num_local: int, tiles_k: int, out_dtype: jnp.dtype, transpose_rhs: bool,
):  # fmt: skip
    """One (n tile, visit, k tile) step; see the module docstring."""
    v, k_i = pl.program_id(1), pl.program_id(2)
    tm, tn = acc_ref.shape
    subblocks = lhs_ref.shape[1] // QUANT_BLOCK
    seg = visit_seg[v]
    valid = v < num_visits[0]
    computes = valid & (seg >= 1) & (seg <= num_local)  # null segments only write zeros

    @pl.when(k_i == 0)
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(computes)
    def _accumulate():
        lhs_scales = lhs_scale_ref[...]  # [tm, k/128], all scale columns of this row tile
        for j in range(subblocks):  # static: one 128-deep scale block at a time
            cols = slice(j * QUANT_BLOCK, (j + 1) * QUANT_BLOCK)
            # rhs block is [tk, tn], or [tn, tk] with transpose_rhs (an NT matmul on the MXU).
            rhs = rhs_ref[:, cols] if transpose_rhs else rhs_ref[cols, :]
            part = jax.lax.dot_general(
                lhs_ref[:, cols].astype(MXU_DTYPE),
                rhs.astype(MXU_DTYPE),
                (((1,), (1 if transpose_rhs else 0,)), ((), ())),
                preferred_element_type=jnp.float32,
            )
            block = k_i * subblocks + j
            row_scale = select_column(lhs_scales, block)  # [tm, 1]
            col_scale = rhs_scale_ref[pl.ds(block, 1), :]  # [1, tn], expanded per column
            acc_ref[...] += part * row_scale * col_scale

    @pl.when(valid & (k_i == tiles_k - 1))
    def _store():
        tile = visit_tile[v]
        rows = tile * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, tn), 0)
        mine = (rows >= seg_start[seg]) & (rows < seg_end[seg])
        first_visit = (v == 0) | (visit_tile[jnp.maximum(v - 1, 0)] != tile)
        # The first visit of a tile owns the block (its old contents are garbage); later visits
        # keep the rows written by earlier groups.
        previous = jnp.where(first_visit, 0.0, out_ref[...].astype(jnp.float32))
        out_ref[...] = jnp.where(mine, acc_ref[...], previous).astype(out_dtype)


def _index_maps(num_local: int, transpose_rhs: bool):
    """BlockSpec index maps. Steps that do not compute pin k (and the group) so no DMA is issued."""

    def computes(v, visit_seg, num_visits):
        seg = visit_seg[v]
        return (v < num_visits[0]) & (seg >= 1) & (seg <= num_local)

    def group(v, visit_seg):
        return jnp.clip(visit_seg[v] - 1, 0, num_local - 1)

    def lhs(n_i, v, k_i, s0, s1, vseg, vtile, nv):
        return vtile[v], jnp.where(computes(v, vseg, nv), k_i, 0)

    def lhs_scale(n_i, v, k_i, s0, s1, vseg, vtile, nv):
        return vtile[v], 0

    def rhs(n_i, v, k_i, s0, s1, vseg, vtile, nv):
        k_blk = jnp.where(computes(v, vseg, nv), k_i, 0)
        return (group(v, vseg), n_i, k_blk) if transpose_rhs else (group(v, vseg), k_blk, n_i)

    def rhs_scale(n_i, v, k_i, s0, s1, vseg, vtile, nv):
        return group(v, vseg), 0, n_i

    def out(n_i, v, k_i, s0, s1, vseg, vtile, nv):
        return vtile[v], n_i

    return lhs, lhs_scale, rhs, rhs_scale, out


def _validate(lhs_q, lhs_scale, rhs_q, rhs_scale, group_sizes, transpose_rhs):
    layout = "[G, n, k]" if transpose_rhs else "[G, k, n]"
    if lhs_q.ndim != 2 or rhs_q.ndim != 3:
        raise ValueError(f"gmm wants lhs_q [m, k] and rhs_q {layout}, got {lhs_q.shape}, {rhs_q.shape}")
    m, k = lhs_q.shape
    if transpose_rhs:
        g, n, k_rhs = rhs_q.shape
    else:
        g, k_rhs, n = rhs_q.shape
    if k != k_rhs or m == 0:
        raise ValueError(f"gmm: lhs_q {lhs_q.shape} and rhs_q {layout} {rhs_q.shape} need equal k and m > 0")
    check_fp8("lhs_q", lhs_q)
    check_fp8("rhs_q", rhs_q)
    check_shape("lhs_scale", lhs_scale, (m, cdiv(k, QUANT_BLOCK)))
    blocks = (cdiv(k, QUANT_BLOCK), cdiv(n, QUANT_BLOCK))
    check_shape("rhs_scale", rhs_scale, (g, *(blocks[::-1] if transpose_rhs else blocks)))
    check_group_sizes(group_sizes, g)
    return m, k, n, g


@functools.partial(jax.jit, static_argnames=("tiling", "out_dtype", "transpose_rhs", "interpret"))
def gmm(
    lhs_q: jax.Array,
    lhs_scale: jax.Array,
    rhs_q: jax.Array,
    rhs_scale: jax.Array,
    group_sizes: jax.Array,
    *,
    tiling: tuple[int, int, int] = DEFAULT_TILING,
    out_dtype: jnp.dtype = jnp.bfloat16,
    group_offset: jax.Array | None = None,
    transpose_rhs: bool = False,
    interpret: bool = False,
) -> jax.Array:
    """FP8 grouped matmul -> [m, n] in `out_dtype` (f32 accumulation).

    Args:
      lhs_q: [m, k] FP8, rows sorted by group; lhs_scale: [m, ceil(k/128)] f32.
      rhs_q: [G_local, k, n] FP8; rhs_scale: [G_local, ceil(k/128), ceil(n/128)] f32.
      group_sizes: [G_total] int32 rows per group (G_total >= G_local; sum may be < m).
      tiling: (tm, tk, tn); tm a multiple of 8 (32 is the FP8 sublane tile on TPU), tk and tn
        multiples of 128. Tiles larger than the (padded) problem are shrunk.
      group_offset: () int32, first group this shard owns (expert parallelism); rows of other
        groups come out as zeros.
      transpose_rhs: rhs_q is [G, n, k] with scales [G, n/128, k/128] (e.g. W for dX = dY W^T):
        the kernel contracts it as stored, so no transposed copy of the weights is made.
      interpret: run the kernel with the Pallas interpreter (CPU/GPU testing).
    """
    m, k, n, num_local = _validate(lhs_q, lhs_scale, rhs_q, rhs_scale, group_sizes, transpose_rhs)
    tm, tk, tn = check_tiling(tuple(tiling), row_multiple=8)
    tiles = (
        min(tm, round_up(m, 8)),
        min(tk, round_up(k, QUANT_BLOCK)),
        min(tn, round_up(n, QUANT_BLOCK)),
    )
    operands = _pad_operands(lhs_q, lhs_scale, rhs_q, rhs_scale, tiles, transpose_rhs)
    offset = jnp.zeros((), jnp.int32) if group_offset is None else group_offset
    sched = gmm_schedule(group_sizes, m=m, tm=tiles[0], group_offset=offset, num_local=num_local)
    out = _pallas_gmm(
        sched, *operands, tiles=tiles, num_local=num_local, out_dtype=jnp.dtype(out_dtype),
        transpose_rhs=transpose_rhs, interpret=interpret,
    )  # fmt: skip
    return out[:, :n] if out.shape[1] != n else out


def _pad_operands(lhs_q, lhs_scale, rhs_q, rhs_scale, tiles, transpose_rhs):
    """Zero-pad k and n to tile multiples and lay the weight scales out as the kernel reads them."""
    _, tk, tn = tiles
    k_pad = round_up(lhs_q.shape[1], tk)
    n_pad = round_up(rhs_q.shape[1 if transpose_rhs else 2], tn)
    kb_pad = k_pad // QUANT_BLOCK
    lhs_q = pad_axis(lhs_q, 1, k_pad)
    lhs_scale = pad_axis(lhs_scale.astype(jnp.float32), 1, kb_pad)
    k_axis, n_axis = (2, 1) if transpose_rhs else (1, 2)
    rhs_q = pad_axis(pad_axis(rhs_q, k_axis, k_pad), n_axis, n_pad)
    if transpose_rhs:
        rhs_scale = jnp.swapaxes(rhs_scale, 1, 2)  # [G, k/128, n/128]: tiny, unlike the weights
    # Weight-block scales repeated per output column: the kernel reads a [1, tn] row per k block.
    rhs_scale = jnp.repeat(rhs_scale.astype(jnp.float32), QUANT_BLOCK, axis=2)
    rhs_scale = pad_axis(pad_axis(rhs_scale, 1, kb_pad), 2, n_pad)
    return lhs_q, lhs_scale, rhs_q, rhs_scale


def _pallas_gmm(
    sched: Schedule, lhs_q, lhs_scale, rhs_q, rhs_scale, *, tiles, num_local, out_dtype,
    transpose_rhs, interpret,
) -> jax.Array:  # fmt: skip
    """The pallas_call on padded operands -> [m, n_pad]."""
    tm, tk, tn = tiles
    (m, k_pad), kb_pad, n_pad = lhs_q.shape, lhs_scale.shape[1], rhs_scale.shape[2]
    tiles_k = k_pad // tk
    lhs_map, lhs_scale_map, rhs_map, rhs_scale_map, out_map = _index_maps(num_local, transpose_rhs)
    kernel = functools.partial(
        _gmm_kernel, num_local=num_local, tiles_k=tiles_k, out_dtype=out_dtype,
        transpose_rhs=transpose_rhs,
    )  # fmt: skip
    return pl.pallas_call(
        kernel,
        out_shape=out_struct((m, n_pad), out_dtype, *sched, lhs_q, lhs_scale, rhs_q, rhs_scale),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(sched),
            grid=(n_pad // tn, sched.visit_seg.shape[0], tiles_k),
            in_specs=[
                pl.BlockSpec((tm, tk), lhs_map),
                pl.BlockSpec((tm, kb_pad), lhs_scale_map),
                pl.BlockSpec((None, tn, tk) if transpose_rhs else (None, tk, tn), rhs_map),
                pl.BlockSpec((None, kb_pad, tn), rhs_scale_map),
            ],
            out_specs=pl.BlockSpec((tm, tn), out_map),
            scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)],
        ),
        # n tiles are independent (megacore may split them); visits revisit output tiles.
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary", "arbitrary")),
        cost_estimate=pl.CostEstimate(
            flops=2 * m * k_pad * n_pad,
            transcendentals=0,
            bytes_accessed=m * k_pad * (n_pad // tn)
            + num_local * k_pad * n_pad
            + m * n_pad * out_dtype.itemsize,
        ),
        interpret=interpret,
    )(*sched, lhs_q, lhs_scale, rhs_q, rhs_scale)
