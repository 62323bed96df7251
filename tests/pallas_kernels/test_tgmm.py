"""FP8 `tgmm` (weight gradients, interpret mode) against float64 NumPy: group boundaries inside
the 128-row scale tiles, empty groups (zero gradient), m not a tile multiple, group_offset."""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import quantize_cols, quantize_rows, tgmm
from pallas_kernels import reference as ref
from tests.pallas_kernels.helpers import (
    FP8_MIN_ERR,
    FP8_RTOL,
    TIGHT_RTOL,
    random_cotangent,
    random_operands,
    rel_err,
)


class Case(NamedTuple):
    m: int
    k: int
    n: int
    sizes: tuple[int, ...]
    tiling: tuple[int, int, int]
    offset: int = 0
    num_local: int | None = None


CASES = {
    # two 128-row scale blocks per visit; groups split blocks; an empty group; rows past the end
    "ragged": Case(300, 256, 384, (0, 45, 100, 3, 0, 120), (256, 128, 128)),
    # odd k and n (padded), m < one tile
    "odd_dims": Case(90, 130, 200, (40, 0, 50), (128, 128, 128)),
    # shard owning groups 1..3 of 5 (group 2 empty)
    "group_offset": Case(200, 128, 256, (30, 60, 0, 70, 40), (128, 128, 128), 1, 3),
}


def _run(case: Case, seed: int):
    num_local = case.num_local or len(case.sizes)
    x, _ = random_operands(seed, case.m, case.k, 1, 1)
    dy = random_cotangent(seed, case.m, case.n)
    x_t_q, x_t_s = quantize_rows(jnp.asarray(x).T)  # X^T: [1,128] tiles along m
    dy_q, dy_s = quantize_cols(jnp.asarray(dy))  # dY: [128,1] tiles along m
    out = tgmm(
        x_t_q, x_t_s, dy_q, dy_s, jnp.asarray(case.sizes, jnp.int32), num_groups=num_local,
        tiling=case.tiling, group_offset=jnp.int32(case.offset), interpret=True,
    )  # fmt: skip
    # float64 reference on the kernel's own FP8 operands (dequantised in NumPy).
    x_deq = ref.np_dequantize_rows(np.asarray(x_t_q).astype(np.float64), np.asarray(x_t_s)).T
    dy_deq = ref.np_dequantize_rows(np.asarray(dy_q).T.astype(np.float64), np.asarray(dy_s).T).T
    expected = ref.np_tgmm(x_deq, dy_deq, case.sizes, num_local, case.offset)
    exact = ref.np_tgmm(x, dy, case.sizes, num_local, case.offset)
    return np.asarray(out), expected, exact


@pytest.fixture(scope="module", params=sorted(CASES))
def case_result(request):
    case = CASES[request.param]
    return case, *_run(case, seed=10 + len(request.param))


def test_tgmm_matches_float64_quantised_math(case_result):
    case, out, expected, _ = case_result
    assert out.shape == (case.num_local or len(case.sizes), case.k, case.n)
    for g in range(out.shape[0]):
        if np.any(expected[g]):
            assert rel_err(out[g], expected[g]) <= TIGHT_RTOL, g


def test_tgmm_is_within_fp8_error_of_unquantised_product(case_result):
    _, out, _, exact = case_result
    assert FP8_MIN_ERR <= rel_err(out, exact) <= FP8_RTOL


def test_empty_groups_get_zero_gradient(case_result):
    case, out, _, _ = case_result
    local = case.sizes[case.offset : case.offset + out.shape[0]]
    for g, size in enumerate(local):
        assert np.all(out[g] == 0) == (size == 0), g


def test_tgmm_rejects_bad_tiling():
    x_t_q, x_t_s = quantize_rows(jnp.ones((128, 64)))
    dy_q, dy_s = quantize_cols(jnp.ones((64, 128)))
    sizes = jnp.asarray([64], jnp.int32)
    with pytest.raises(ValueError, match="tm must be a multiple of 128"):
        tgmm(x_t_q, x_t_s, dy_q, dy_s, sizes, tiling=(64, 128, 128), interpret=True)
    with pytest.raises(ValueError, match="dout_scale"):
        tgmm(x_t_q, x_t_s, dy_q, dy_s.T, sizes, interpret=True)
