"""`fp8_grouped_matmul` custom_vjp: forward and (dX, dW) against float64 NumPy of the FP8 recipe
and against jax.grad of the unquantised reference (FP8-level tolerance)."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

from pallas_kernels import fp8_grouped_matmul
from pallas_kernels import reference as ref
from pallas_kernels.fp8_gmm import _sum_over_shards
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
    dtype: jnp.dtype
    offset: int | None = None
    num_local: int | None = None
    pow2: bool = False


CASES = {
    # f32, shard owning groups 1..3 of 5: empty group, 5-row group, boundaries mid-tile, tail rows
    "f32_sharded": Case(170, 256, 384, (20, 0, 5, 90, 35), (32, 128, 256), jnp.float32, 1, 3),
    # bf16 activations and weights, power-of-two scales, m not a multiple of tm
    "bf16_pow2": Case(150, 384, 256, (64, 0, 3, 70), (64, 256, 128), jnp.bfloat16, pow2=True),
}


def _call(case: Case):
    sizes = jnp.asarray(case.sizes, jnp.int32)
    offset = None if case.offset is None else jnp.int32(case.offset)

    def f(x, w):
        return fp8_grouped_matmul(
            x, w, sizes, tiling=case.tiling, interpret=True, pow2_scale=case.pow2,
            group_offset=offset,
        )  # fmt: skip

    return f


@pytest.fixture(scope="module", params=sorted(CASES))
def grads(request):
    case = CASES[request.param]
    num_local = case.num_local or len(case.sizes)
    x, w = random_operands(20 + len(request.param), case.m, case.k, case.n, num_local)
    dy = random_cotangent(20, case.m, case.n)
    # Round the inputs to the working dtype first so every reference sees the same numbers.
    x = np.asarray(jnp.asarray(x, case.dtype).astype(jnp.float32))
    w = np.asarray(jnp.asarray(w, case.dtype).astype(jnp.float32))
    dy = np.asarray(jnp.asarray(dy, case.dtype).astype(jnp.float32))
    y, vjp = jax.vjp(_call(case), jnp.asarray(x, case.dtype), jnp.asarray(w, case.dtype))
    dx, dw = vjp(jnp.asarray(dy, case.dtype))
    outs = tuple(np.asarray(a.astype(jnp.float32)) for a in (y, dx, dw))
    assert (y.dtype, dx.dtype, dw.dtype) == (case.dtype,) * 3
    return case, x, w, dy, outs


def test_forward_and_grads_match_float64_fp8_recipe(grads):
    case, x, w, dy, (y, dx, dw) = grads
    off = case.offset or 0
    y_ref = ref.np_fp8_gmm(x, w, case.sizes, off, case.pow2)
    dx_ref, dw_ref = ref.np_fp8_gmm_grads(x, w, case.sizes, dy, off, case.pow2)
    # f32 outputs carry only accumulation error; bf16 outputs add one bf16 rounding (2^-9).
    tol = TIGHT_RTOL if case.dtype == jnp.float32 else 2.0**-8
    assert rel_err(y, y_ref) <= tol
    assert rel_err(dx, dx_ref) <= tol
    assert rel_err(dw, dw_ref) <= tol


def test_grads_match_jax_grad_of_unquantised_reference(grads):
    case, x, w, dy, (y, dx, dw) = grads
    off = case.offset or 0
    sizes = jnp.asarray(case.sizes, jnp.int32)
    y_exact, vjp = jax.vjp(lambda a, b: ref.gmm_reference(a, b, sizes, off), x, w)
    dx_exact, dw_exact = vjp(jnp.asarray(dy))
    for got, exact in [(y, y_exact), (dx, dx_exact), (dw, dw_exact)]:
        assert FP8_MIN_ERR <= rel_err(got, exact) <= FP8_RTOL


def test_rows_of_other_shards_get_zero_output_and_gradient(grads):
    case, _, _, _, (y, dx, _) = grads
    ends = np.cumsum(case.sizes)
    first = case.offset or 0
    last = first + (case.num_local or len(case.sizes)) - 1
    lo, hi = ends[first] - case.sizes[first], ends[last]
    for a in (y, dx):
        assert np.all(a[:lo] == 0) and np.all(a[hi:] == 0) and np.all(np.abs(a[lo:hi]).sum(1) > 0)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="fp8_grouped_matmul"):
        fp8_grouped_matmul(jnp.ones((8, 128)), jnp.ones((2, 64, 128)), jnp.asarray([4, 4]))


def test_expert_parallel_shard_map_matches_unsharded_recipe():
    """Experts split over 2 CPU devices, tokens replicated: each shard computes its own groups via
    group_offset, and the shards' outputs and dX add up to the unsharded result.

    check_vma=False because Pallas *interpret* mode cannot evaluate index maps on varying scalar
    prefetch under check_vma (JAX: "dynamic_slice requires varying manual axes to match"); the
    compiled TPU path runs with check_vma=True (test_aot.py), where the custom_vjp psums dX itself.
    Without vma checking nothing is psum-ed for us, so the test sums the per-shard dX."""
    mesh = Mesh(np.array(jax.devices()[:2]), ("expert",), axis_types=(AxisType.Auto,))
    sizes = (30, 0, 45, 21)  # two experts per shard; rows past 96 belong to no expert
    m, k, n = 110, 256, 128
    x, w = random_operands(31, m, k, n, len(sizes))
    dy = random_cotangent(31, m, n)

    def shard(x, w_local, sizes, dy):
        offset = (jax.lax.axis_index("expert") * w_local.shape[0]).astype(jnp.int32)
        f = functools.partial(
            fp8_grouped_matmul, group_sizes=sizes, tiling=(32, 128, 128), interpret=True,
            group_offset=offset,
        )  # fmt: skip
        y, vjp = jax.vjp(f, x, w_local)
        return (y, *vjp(dy))

    run = jax.jit(jax.shard_map(
        shard, mesh=mesh, in_specs=(P(), P("expert"), P(), P()),
        out_specs=(P("expert"), P("expert"), P("expert")), check_vma=False,
    ))  # fmt: skip
    y, dx, dw = run(jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes, jnp.int32), jnp.asarray(dy))
    y = np.asarray(y).reshape(2, m, n).sum(0)
    dx = np.asarray(dx).reshape(2, m, k).sum(0)
    dx_ref, dw_ref = ref.np_fp8_gmm_grads(x, w, sizes, dy)
    assert rel_err(y, ref.np_fp8_gmm(x, w, sizes)) <= TIGHT_RTOL
    assert rel_err(dx, dx_ref) <= TIGHT_RTOL
    assert rel_err(dw, dw_ref) <= TIGHT_RTOL


def test_sum_over_shards_psums_only_over_axes_the_primal_lacks():
    """The custom_vjp's rule for cotangents under shard_map(check_vma=True)."""
    mesh = Mesh(np.array(jax.devices()[:2]), ("expert",), axis_types=(AxisType.Auto,))

    def body(x, v):
        cotangent = x * v  # varies over "expert" through v
        return _sum_over_shards(cotangent, x), _sum_over_shards(cotangent, v)

    run = jax.jit(jax.shard_map(
        body, mesh=mesh, in_specs=(P(), P("expert")), out_specs=(P(), P("expert"))
    ))  # fmt: skip
    rng = np.random.default_rng(40)
    x, v = rng.standard_normal(3).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    summed, local = run(jnp.asarray(x), jnp.asarray(v))
    np.testing.assert_allclose(summed, x * (v[:3] + v[3:]), rtol=1e-6)
    np.testing.assert_allclose(local, np.tile(x, 2) * v, rtol=1e-6)
