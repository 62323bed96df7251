"""FP8 `gmm` (interpret mode) against float64 NumPy of the same quantised math and the unquantised
product: empty groups, groups smaller than a tile, boundaries inside tiles, ragged m/k/n,
expert-parallel `group_offset`."""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import gmm, quantize_blocks, quantize_rows
from pallas_kernels import reference as ref
from tests.pallas_kernels.helpers import (
    FP8_MIN_ERR,
    FP8_RTOL,
    TIGHT_RTOL,
    random_operands,
    rel_err,
)


class Case(NamedTuple):
    m: int
    k: int
    n: int
    sizes: tuple[int, ...]  # all groups' sizes (G_total)
    tiling: tuple[int, int, int]
    offset: int | None = None  # expert-parallel shard start
    num_local: int | None = None  # groups in this shard (default: all)
    pow2: bool = False
    transpose_rhs: bool = False  # pass W as [G, n, k] (how the backward feeds W^T)


CASES = {
    # tile-aligned groups, 2 k tiles with 2 scale blocks each
    "aligned": Case(256, 512, 256, (64, 64, 128, 0), (64, 256, 128)),
    # empty groups, a 3-row group, boundaries mid-tile, m % tm != 0, rows past the last group
    "ragged": Case(200, 384, 256, (0, 3, 70, 50, 0, 40), (64, 128, 128)),
    # k and n not multiples of 128 (padded), many groups in one tile, tm clamped to m
    "odd_dims": Case(40, 200, 130, (5, 0, 7, 1, 27), (64, 128, 128)),
    # this shard owns groups 2..4 of 7
    "group_offset": Case(160, 256, 256, (10, 30, 0, 41, 17, 50, 12), (32, 128, 128), 2, 3),
    "pow2_scales": Case(96, 256, 128, (30, 0, 66), (32, 256, 128), pow2=True),
    "transpose_rhs": Case(120, 384, 200, (50, 0, 9, 61), (32, 256, 128), transpose_rhs=True),
}


def _run(case: Case, seed: int, out_dtype=jnp.float32):
    num_local = case.num_local or len(case.sizes)
    x, w = random_operands(seed, case.m, case.k, case.n, num_local)
    x_q, x_s = quantize_rows(jnp.asarray(x), pow2_scale=case.pow2)
    w_in = np.swapaxes(w, 1, 2) if case.transpose_rhs else w
    w_q, w_s = quantize_blocks(jnp.asarray(w_in), pow2_scale=case.pow2)
    out = gmm(
        x_q, x_s, w_q, w_s, jnp.asarray(case.sizes, jnp.int32), tiling=case.tiling,
        out_dtype=out_dtype, transpose_rhs=case.transpose_rhs, interpret=True,
        group_offset=None if case.offset is None else jnp.int32(case.offset),
    )  # fmt: skip
    return x, w, np.asarray(out.astype(jnp.float32))


@pytest.fixture(scope="module", params=sorted(CASES))
def case_result(request):
    case = CASES[request.param]
    return case, *_run(case, seed=len(request.param))


def test_gmm_matches_float64_quantised_math(case_result):
    case, x, w, out = case_result
    expected = ref.np_fp8_gmm(x, w, case.sizes, case.offset or 0, case.pow2)
    assert out.shape == (case.m, case.n)
    assert rel_err(out, expected) <= TIGHT_RTOL
    # Elementwise as well, relative to the row scale: no row may hide behind the global norm.
    row_norm = np.linalg.norm(expected, axis=1, keepdims=True) + 1e-30
    assert np.max(np.abs(out - expected) / row_norm) <= TIGHT_RTOL


def test_gmm_is_within_fp8_error_of_unquantised_product(case_result):
    case, x, w, out = case_result
    exact = ref.np_gmm(x, w, case.sizes, case.offset or 0)
    assert FP8_MIN_ERR <= rel_err(out, exact) <= FP8_RTOL


def test_rows_outside_local_groups_are_exactly_zero(case_result):
    case, _, _, out = case_result
    ends = np.minimum(np.cumsum(case.sizes), case.m)
    starts = ends - np.asarray(case.sizes)
    first = case.offset or 0
    last = first + (case.num_local or len(case.sizes)) - 1
    lo, hi = starts[first], ends[last]
    assert np.all(out[:lo] == 0) and np.all(out[hi:] == 0)
    assert np.all(np.abs(out[lo:hi]).sum(axis=1) > 0)


def test_bf16_output_rounds_the_f32_result():
    case = CASES["ragged"]
    _, _, out32 = _run(case, seed=3)
    _, _, out16 = _run(case, seed=3, out_dtype=jnp.bfloat16)
    np.testing.assert_array_equal(out16, np.asarray(jnp.asarray(out32).astype(jnp.bfloat16), np.float32))


def test_gmm_rejects_bad_inputs():
    x_q, x_s = quantize_rows(jnp.ones((16, 128)))
    w_q, w_s = quantize_blocks(jnp.ones((2, 128, 128)))
    sizes = jnp.asarray([8, 8], jnp.int32)
    with pytest.raises(ValueError, match="tiling"):
        gmm(x_q, x_s, w_q, w_s, sizes, tiling=(16, 100, 128), interpret=True)
    with pytest.raises(ValueError, match="float8"):
        gmm(x_q.astype(jnp.bfloat16), x_s, w_q, w_s, sizes, interpret=True)
    with pytest.raises(ValueError, match="lhs_scale"):
        gmm(x_q, x_s[:, :0], w_q, w_s, sizes, interpret=True)
    with pytest.raises(ValueError, match="group_sizes"):
        gmm(x_q, x_s, w_q, w_s, sizes[:1], interpret=True)
