"""The Pallas expert-compute backends (interpret mode off-TPU) against `dense` and float64 NumPy.

`megablox` is bf16/f32 upstream code: it must equal `dense` to f32 rounding. `pallas_fp8` is the
blockwise FP8 recipe: it must equal a float64 evaluation of the *same* quantised SwiGLU tightly,
and the unquantised `dense` only to FP8 level. Error model for that bound: an E4M3 operand carries
a relative RMS error of 2^-4/sqrt(3)*sqrt(E[1/M^2]) ~= 0.0265 (tests/pallas_kernels/helpers.py),
so gate and up (two quantised operands each) are off by ~0.0375; silu(g)*u carries ~0.05, and the
down GEMM adds Q(a) and Q(W_down): sqrt(0.05^2 + 2*0.0265^2) ~= 0.06 forward (measured 0.058 and
0.070 on these problems). Gradients chain the same number of quantised operands plus Q(dY)
(measured 0.055-0.069). Bounds: 0.09 forward, 0.10 gradients (1.5x the model), and >= 0.03
to prove the path really quantises.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.ops import expert_compute
from ling_jax.ops.expert_compute import ExpertWeights
from tests.ops.fp8_reference import np_fp8_moe, np_moe, random_moe_problem

FP8_FWD_MAX, FP8_GRAD_MAX, FP8_MIN = 0.09, 0.10, 0.03
# Problems: 40 tokens x top-2 = 80 sorted rows (< one 128-row tile, group boundaries inside it);
# D = 128, F = 64 (F pads inside the kernels); `skew` leaves experts 3..5 empty.
PROBLEMS = {"spread": dict(seed=0, experts=4, skew=False), "skew": dict(seed=1, experts=6, skew=True)}


def rel_err(actual, expected) -> float:
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


def _problem(name):
    p = PROBLEMS[name]
    return random_moe_problem(p["seed"], 40, 128, 64, p["experts"], 2, skew=p["skew"])


def _run(backend: str, x, idx, combine, weights):
    """(y, grads of <y, probe> w.r.t. (x, combine, gate, up, down)) for one backend, in f32."""
    probe = jnp.asarray(np.random.default_rng(7).standard_normal(x.shape), jnp.float32)
    fn = expert_compute.get(backend)

    def loss(x, c, w):
        y = fn(x, jnp.asarray(idx), c, w, dtype=jnp.float32)
        return jnp.sum(y * probe), y

    args = (jnp.asarray(x), jnp.asarray(combine), ExpertWeights(*map(jnp.asarray, weights)))
    grads, y = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)
    return np.asarray(y), [np.asarray(g) for g in jax.tree.leaves(grads)]


@pytest.fixture(scope="module", params=sorted(PROBLEMS))
def results(request):
    problem = _problem(request.param)
    return problem, {b: _run(b, *problem) for b in ("dense", "megablox", "pallas_fp8")}


def test_dense_reference_matches_float64(results):
    problem, out = results
    np.testing.assert_allclose(out["dense"][0], np_moe(*problem), rtol=1e-5, atol=2e-5)


def test_megablox_matches_dense(results):
    _, out = results
    y, grads = out["megablox"]
    y_ref, grads_ref = out["dense"]
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=5e-5)


def test_pallas_fp8_matches_float64_fp8_recipe(results):
    """Forward against float64 NumPy of the same quantise -> matmul math (tight)."""
    problem, out = results
    assert rel_err(out["pallas_fp8"][0], np_fp8_moe(*problem)) < 1e-5


def test_pallas_fp8_close_to_dense(results):
    _, out = results
    y, grads = out["pallas_fp8"]
    y_ref, grads_ref = out["dense"]
    assert FP8_MIN < rel_err(y, y_ref) < FP8_FWD_MAX
    for name, g, g_ref in zip(["x", "combine", "gate", "up", "down"], grads, grads_ref, strict=True):
        err = rel_err(g, g_ref)
        assert FP8_MIN < err < FP8_GRAD_MAX, (name, err)
