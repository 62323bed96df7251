"""Visit schedules for grouped matmuls: which (segment, row tile) pair each grid step works on.

Rows [0, m) are sorted by group. We cut them into contiguous *segments* (one per group, plus
for `gmm` two "null" segments for rows owned by other expert-parallel shards or past the last
group) and give each segment one *visit* per row tile of `tm` rows that it overlaps. A tile that
holds a group boundary is therefore visited once per group it touches, and the kernel masks the
rows of the other groups (the megablox idea, re-derived here with explicit segments).

Visits are sorted by segment, and segments by row, so the row-tile index never decreases and an
output tile's visits are consecutive grid steps (Pallas keeps the output block resident between
them). The number of visits is data dependent, so the grid is sized by a static upper bound and
the steps past `num_visits` repeat the last visit and do nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Schedule(NamedTuple):
    """Scalar-prefetch metadata (all int32, small enough for SMEM)."""

    seg_start: jax.Array  # [S] first row of each segment
    seg_end: jax.Array  # [S] one past the last row of each segment
    visit_seg: jax.Array  # [V] segment handled by grid step v
    visit_tile: jax.Array  # [V] row tile handled by grid step v
    num_visits: jax.Array  # [1] number of real visits; later steps are padding


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _local_bounds(
    group_sizes: jax.Array, m: int, group_offset: jax.Array, num_local: int
) -> tuple[jax.Array, jax.Array]:
    """Row ranges [start, end) of groups offset .. offset + num_local - 1, clipped to [0, m)."""
    ends = jnp.clip(jnp.cumsum(group_sizes.astype(jnp.int32)), 0, m).astype(jnp.int32)
    starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
    offset = jnp.asarray(group_offset, jnp.int32).reshape(())
    local_starts = jax.lax.dynamic_slice(starts, (offset,), (num_local,))
    local_ends = jax.lax.dynamic_slice(ends, (offset,), (num_local,))
    return local_starts, local_ends


def _visits(
    seg_start: jax.Array,
    seg_end: jax.Array,
    *,
    tm: int,
    tiles_m: int,
    num_steps: int,
    visit_empty: bool,
) -> Schedule:
    """One visit per (segment, overlapped tile); empty segments get one visit if `visit_empty`."""
    first_tile = jnp.minimum(seg_start // tm, tiles_m - 1)
    end_tile = (seg_end + tm - 1) // tm
    n_tiles = jnp.where(seg_end > seg_start, end_tile - first_tile, 0)
    if visit_empty:
        n_tiles = jnp.maximum(n_tiles, 1)
    cum = jnp.cumsum(n_tiles).astype(jnp.int32)
    num_visits = cum[-1]
    # Padding steps (v >= num_visits) replay the last real visit so no block index changes.
    steps = jnp.minimum(jnp.arange(num_steps, dtype=jnp.int32), num_visits - 1)
    visit_seg = jnp.searchsorted(cum, steps, side="right").astype(jnp.int32)
    first_visit_of_seg = cum[visit_seg] - n_tiles[visit_seg]
    visit_tile = first_tile[visit_seg] + steps - first_visit_of_seg
    return Schedule(
        seg_start=seg_start.astype(jnp.int32),
        seg_end=seg_end.astype(jnp.int32),
        visit_seg=visit_seg,
        visit_tile=visit_tile.astype(jnp.int32),
        num_visits=num_visits.reshape(1),
    )


def gmm_schedule(
    group_sizes: jax.Array, *, m: int, tm: int, group_offset: jax.Array, num_local: int
) -> Schedule:
    """Segments [rows before the shard | local groups ... | rows after]; segment s > 0 and
    s <= num_local computes with local group s - 1, the two null segments only write zeros."""
    starts, ends = _local_bounds(group_sizes, m, group_offset, num_local)
    m_arr = jnp.full((1,), m, jnp.int32)
    seg_start = jnp.concatenate([jnp.zeros((1,), jnp.int32), starts, ends[-1:]])
    seg_end = jnp.concatenate([starts[:1], ends, m_arr])
    tiles_m = cdiv(m, tm)
    # Segments partition [0, m): every tile is visited at least once, so every output row is written.
    return _visits(
        seg_start,
        seg_end,
        tm=tm,
        tiles_m=tiles_m,
        num_steps=tiles_m + num_local + 1,
        visit_empty=False,
    )


def tgmm_schedule(
    group_sizes: jax.Array, *, m: int, tm: int, group_offset: jax.Array, num_local: int
) -> Schedule:
    """Segments = local groups; an empty group still gets one visit so its gradient is zeroed."""
    starts, ends = _local_bounds(group_sizes, m, group_offset, num_local)
    tiles_m = cdiv(m, tm)
    return _visits(starts, ends, tm=tm, tiles_m=tiles_m, num_steps=tiles_m + num_local, visit_empty=True)
