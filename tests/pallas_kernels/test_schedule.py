"""Visit schedules: every (group, overlapped row tile) pair exactly once, tiles in order."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.schedule import gmm_schedule, tgmm_schedule


def _visits(sched):
    n = int(sched.num_visits[0])
    return np.asarray(sched.visit_seg)[:n], np.asarray(sched.visit_tile)[:n]


def _overlaps(starts, ends, tm):
    """Expected (segment, tile) pairs for non-empty segments."""
    pairs = []
    for s, (a, b) in enumerate(zip(starts, ends, strict=True)):
        pairs += [(s, t) for t in range(a // tm, -(-b // tm))] if b > a else []
    return pairs


@pytest.mark.parametrize("seed", range(4))
def test_gmm_schedule_covers_every_row_once_per_group(seed):
    rng = np.random.default_rng(seed)
    num_total, num_local, tm = 9, 4, 16
    sizes = rng.integers(0, 30, num_total) * (rng.random(num_total) > 0.3)
    m = int(sizes.sum()) + int(rng.integers(1, 40))  # rows past the last group too
    offset = int(rng.integers(0, num_total - num_local + 1))
    sched = gmm_schedule(
        jnp.asarray(sizes, jnp.int32), m=m, tm=tm, group_offset=jnp.int32(offset),
        num_local=num_local,
    )  # fmt: skip
    ends = np.cumsum(sizes)
    starts = ends - sizes
    seg_start = [0, *starts[offset : offset + num_local], ends[offset + num_local - 1]]
    seg_end = [starts[offset], *ends[offset : offset + num_local], m]
    np.testing.assert_array_equal(np.asarray(sched.seg_start), seg_start)
    np.testing.assert_array_equal(np.asarray(sched.seg_end), seg_end)
    seg, tile = _visits(sched)
    assert list(zip(seg.tolist(), tile.tolist(), strict=True)) == _overlaps(seg_start, seg_end, tm)
    assert np.all(np.diff(tile) >= 0) and set(tile) == set(range(-(-m // tm)))
    assert len(sched.visit_seg) == -(-m // tm) + num_local + 1  # the static bound holds
    # Padding steps replay the last visit (no block index change, hence no DMA).
    assert np.all(np.asarray(sched.visit_tile)[len(seg) :] == tile[-1])


def test_tgmm_schedule_visits_empty_groups_once():
    sizes = np.array([0, 40, 0, 3, 60, 0], np.int32)
    sched = tgmm_schedule(jnp.asarray(sizes), m=128, tm=32, group_offset=jnp.int32(0), num_local=6)
    seg, tile = _visits(sched)
    assert seg.tolist() == [0, 1, 1, 2, 3, 4, 4, 4, 5]
    assert tile.tolist() == [0, 0, 1, 1, 1, 1, 2, 3, 3]
    assert len(sched.visit_seg) == 4 + 6
