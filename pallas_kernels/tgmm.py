"""FP8 transposed grouped matmul `tgmm` for weight gradients: dW[g] = X[rows of g]^T @ dY[rows of g].

The contraction runs over the m rows (tokens) of each group, so the [1, 128] activation/gradient
tiles of the recipe (TR §5.1: tiles along the reduction dimension) run along m here:

* lhs is passed *transposed*, X^T [k, m], quantised with `quantize_rows(x.T)`: scale [k, m/128].
* dout is passed as is, dY [m, n], quantised with `quantize_cols(dy)`: scale [m/128, n].

Both layouts put the scale vector where the kernel needs it: a [tk, 1] column picked from the
X^T scale block and a [1, tn] row sliced from the dY scale block, so a 128-row slice gives
acc[tk, tn] += (X^T_q @ dY_q) * sx * sdy with no transposes in the kernel. A 128-row scale tile
may straddle a group boundary; that is fine because the scale is a common factor of the tile and
the rows of other groups are masked to zero before the MXU.

Grid = (k tiles, n tiles, visits); a group's visits are consecutive, its [tk, tn] output block
is zeroed on the first and stored on the last, and an empty group gets one visit that stores zeros.
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
from pallas_kernels.schedule import cdiv, tgmm_schedule

DEFAULT_TGMM_TILING = (256, 512, 512)


def _in_group(rows: jax.Array, start: jax.Array, end: jax.Array) -> jax.Array:
    return (rows >= start) & (rows < end)


def _tgmm_kernel(
    seg_start, seg_end, visit_seg, visit_tile, num_visits,  # scalar prefetch (SMEM)
    lhs_t_ref, lhs_t_scale_ref, dout_ref, dout_scale_ref,  # VMEM input blocks
    out_ref,  # VMEM [tk, tn] block of group visit_seg[v]
    acc_ref,  # VMEM f32 scratch
    *, num_steps: int, m_blocks: int, out_dtype: jnp.dtype,
):  # fmt: skip
    """One (k tile, n tile, visit) step; see the module docstring."""
    v = pl.program_id(2)
    tm = dout_ref.shape[0]
    seg, tile = visit_seg[v], visit_tile[v]
    start, end = seg_start[seg], seg_end[seg]
    valid = v < num_visits[0]
    first = (v == 0) | (visit_seg[jnp.maximum(v - 1, 0)] != seg)
    last = (v == num_visits[0] - 1) | (visit_seg[jnp.minimum(v + 1, num_steps - 1)] != seg)

    @pl.when(valid & first)
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(valid & (end > start))
    def _accumulate():
        lhs_scales = lhs_t_scale_ref[...]  # [tk, m/128]
        for j in range(tm // QUANT_BLOCK):  # static: one 128-row scale block at a time
            row0 = tile * tm + j * QUANT_BLOCK
            rows = slice(j * QUANT_BLOCK, (j + 1) * QUANT_BLOCK)
            lane_rows = row0 + jax.lax.broadcasted_iota(jnp.int32, (1, QUANT_BLOCK), 1)
            sub_rows = row0 + jax.lax.broadcasted_iota(jnp.int32, (QUANT_BLOCK, 1), 0)
            # Mask both operands: rows past m in a partial tile hold garbage (maybe NaN).
            x_t = jnp.where(_in_group(lane_rows, start, end), lhs_t_ref[:, rows].astype(MXU_DTYPE), 0)
            dy = jnp.where(_in_group(sub_rows, start, end), dout_ref[rows, :].astype(MXU_DTYPE), 0)
            part = jnp.dot(x_t, dy, preferred_element_type=jnp.float32)  # [tk, tn]
            block = tile * (tm // QUANT_BLOCK) + j
            x_scale = select_column(lhs_scales, block)  # [tk, 1]; 0 past the last block
            dy_scale = dout_scale_ref[pl.ds(jnp.minimum(block, m_blocks - 1), 1), :]  # [1, tn]
            acc_ref[...] += part * x_scale * dy_scale

    @pl.when(valid & last)
    def _store():
        out_ref[...] = acc_ref[...].astype(out_dtype)


def _index_maps():
    def lhs_t(k_i, n_i, v, s0, s1, vseg, vtile, nv):
        return k_i, vtile[v]

    def lhs_t_scale(k_i, n_i, v, s0, s1, vseg, vtile, nv):
        return k_i, 0

    def dout(k_i, n_i, v, s0, s1, vseg, vtile, nv):
        return vtile[v], n_i

    def dout_scale(k_i, n_i, v, s0, s1, vseg, vtile, nv):
        return 0, n_i

    def out(k_i, n_i, v, s0, s1, vseg, vtile, nv):
        return vseg[v], k_i, n_i

    return lhs_t, lhs_t_scale, dout, dout_scale, out


def _validate(lhs_t_q, lhs_t_scale, dout_q, dout_scale, group_sizes, num_groups):
    if lhs_t_q.ndim != 2 or dout_q.ndim != 2 or lhs_t_q.shape[1] != dout_q.shape[0]:
        raise ValueError(
            f"tgmm wants lhs_t_q [k, m] (X transposed) and dout_q [m, n], got {lhs_t_q.shape} "
            f"and {dout_q.shape}"
        )
    (k, m), n = lhs_t_q.shape, dout_q.shape[1]
    if m == 0:
        raise ValueError("tgmm: m (rows of dout_q) must be > 0")
    check_fp8("lhs_t_q", lhs_t_q)
    check_fp8("dout_q", dout_q)
    check_shape("lhs_t_scale", lhs_t_scale, (k, cdiv(m, QUANT_BLOCK)))
    check_shape("dout_scale", dout_scale, (cdiv(m, QUANT_BLOCK), n))
    num_local = group_sizes.shape[0] if num_groups is None else num_groups
    check_group_sizes(group_sizes, num_local)
    return m, k, n, num_local


@functools.partial(jax.jit, static_argnames=("num_groups", "tiling", "out_dtype", "interpret"))
def tgmm(
    lhs_t_q: jax.Array,
    lhs_t_scale: jax.Array,
    dout_q: jax.Array,
    dout_scale: jax.Array,
    group_sizes: jax.Array,
    *,
    num_groups: int | None = None,
    tiling: tuple[int, int, int] = DEFAULT_TGMM_TILING,
    out_dtype: jnp.dtype = jnp.float32,
    group_offset: jax.Array | None = None,
    interpret: bool = False,
) -> jax.Array:
    """FP8 weight-gradient grouped matmul -> [num_groups, k, n] in `out_dtype` (f32 accumulation).

    Args:
      lhs_t_q: [k, m] FP8 = X^T quantised with [1,128] tiles along m; lhs_t_scale: [k, ceil(m/128)].
      dout_q: [m, n] FP8 = dY quantised with [128,1] tiles along m; dout_scale: [ceil(m/128), n].
      group_sizes: [G_total] int32 (rows sorted by group).
      num_groups: groups this shard owns (default G_total), starting at `group_offset`.
      tiling: (tm, tk, tn): tm (rows per visit) and tk, tn multiples of 128.
    """
    m, k, n, num_local = _validate(lhs_t_q, lhs_t_scale, dout_q, dout_scale, group_sizes, num_groups)
    tm, tk, tn = check_tiling(tuple(tiling), row_multiple=QUANT_BLOCK)
    tiles = (
        min(tm, round_up(m, QUANT_BLOCK)),
        min(tk, round_up(k, QUANT_BLOCK)),
        min(tn, round_up(n, QUANT_BLOCK)),
    )
    k_pad, n_pad = round_up(k, tiles[1]), round_up(n, tiles[2])
    # Zero-pad k and n to tile multiples (m stays: partial row tiles are masked in the kernel).
    lhs_t_q = pad_axis(lhs_t_q, 0, k_pad)
    lhs_t_scale = pad_axis(lhs_t_scale.astype(jnp.float32), 0, k_pad)
    dout_q = pad_axis(dout_q, 1, n_pad)
    dout_scale = pad_axis(dout_scale.astype(jnp.float32), 1, n_pad)
    offset = jnp.zeros((), jnp.int32) if group_offset is None else group_offset
    sched = tgmm_schedule(group_sizes, m=m, tm=tiles[0], group_offset=offset, num_local=num_local)
    out = _pallas_tgmm(
        sched, lhs_t_q, lhs_t_scale, dout_q, dout_scale, tiles=tiles, num_local=num_local,
        out_dtype=jnp.dtype(out_dtype), interpret=interpret,
    )  # fmt: skip
    return out[:, :k, :n] if (k_pad, n_pad) != (k, n) else out


def _pallas_tgmm(
    sched, lhs_t_q, lhs_t_scale, dout_q, dout_scale, *, tiles, num_local, out_dtype, interpret
) -> jax.Array:
    """The pallas_call on padded operands -> [num_local, k_pad, n_pad]."""
    tm, tk, tn = tiles
    (k_pad, m), (m_blocks, n_pad) = lhs_t_q.shape, dout_scale.shape
    num_steps = sched.visit_seg.shape[0]
    lhs_t_map, lhs_t_scale_map, dout_map, dout_scale_map, out_map = _index_maps()
    kernel = functools.partial(_tgmm_kernel, num_steps=num_steps, m_blocks=m_blocks, out_dtype=out_dtype)
    return pl.pallas_call(
        kernel,
        out_shape=out_struct(
            (num_local, k_pad, n_pad), out_dtype, *sched, lhs_t_q, lhs_t_scale, dout_q, dout_scale
        ),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(sched),
            grid=(k_pad // tk, n_pad // tn, num_steps),
            in_specs=[
                pl.BlockSpec((tk, tm), lhs_t_map),
                pl.BlockSpec((tk, m_blocks), lhs_t_scale_map),
                pl.BlockSpec((tm, tn), dout_map),
                pl.BlockSpec((m_blocks, tn), dout_scale_map),
            ],
            out_specs=pl.BlockSpec((None, tk, tn), out_map),
            scratch_shapes=[pltpu.VMEM((tk, tn), jnp.float32)],
        ),
        # Output tiles (k, n) are independent; the visits accumulate into one group's block.
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        cost_estimate=pl.CostEstimate(
            flops=2 * m * k_pad * n_pad,
            transcendentals=0,
            bytes_accessed=m * k_pad * (n_pad // tn)
            + m * n_pad * (k_pad // tk)
            + num_local * k_pad * n_pad * out_dtype.itemsize,
        ),
        interpret=interpret,
    )(*sched, lhs_t_q, lhs_t_scale, dout_q, dout_scale)
