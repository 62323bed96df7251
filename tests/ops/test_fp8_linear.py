"""Blockwise FP8 linears: fp8_matmul/fp8_einsum against float64 NumPy of the same quantised math
(tight), against the unquantised product (FP8 level), gradients, `blocked_fp8`, and the config
switch that threads FP8 through the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ling_jax.config import ConfigError, get_preset, model_config, validate_model_config
from ling_jax.config.model import expert_backend
from ling_jax.model.linear import project
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.ops import expert_compute, fp8_linear
from ling_jax.ops.expert_compute import ExpertWeights
from pallas_kernels import reference as ref
from tests.ops.fp8_reference import np_fp8_moe, random_moe_problem
from tests.pallas_kernels.helpers import (
    FP8_MIN_ERR,
    FP8_RTOL,
    random_cotangent,
    random_operands,
    rel_err,
)

IMPLS = sorted(fp8_linear.IMPLS)
# Only f32 rounding of q*s and the summation order separate the impls from float64.
TIGHT = 2e-6


def _np_fp8_matmul_grads(x, w, dy):
    """float64 (y, dx, dw) of the recipe for one 2-D product (one group of the gmm reference)."""
    m = x.shape[0]
    y = ref.np_fp8_gmm(x, w[None], [m])
    dx, dw = ref.np_fp8_gmm_grads(x, w[None], [m], dy)
    return y, dx, dw[0]


def _fwd_bwd(f, x, w, dy):
    """(y, dx, dw) of f at (x, w) with cotangent dy, jitted (arguments, not folded constants)."""

    def run(x, w, dy):
        y, vjp = jax.vjp(f, x, w)
        return (y, *vjp(dy))

    return jax.jit(run)(jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy))


@pytest.fixture(scope="module")
def operands():
    """m, k, n not multiples of 128 (partial tiles, a partial weight block)."""
    x, w = random_operands(3, 70, 300, 200, 1)
    return x, w[0], random_cotangent(3, 70, 200)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_fp8_recipe(operands, impl):
    x, w, dy = operands
    got_all = _fwd_bwd(lambda a, b: fp8_linear.fp8_matmul(a, b, impl=impl), x, w, dy)
    for got, want in zip(got_all, _np_fp8_matmul_grads(x, w, dy), strict=True):
        assert rel_err(got, want) < TIGHT


@pytest.mark.parametrize("impl", IMPLS)
def test_fp8_level_error_against_unquantised(operands, impl):
    x, w, dy = operands
    f = lambda a, b: fp8_linear.fp8_matmul(a, b, impl=impl)
    exact = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    for got, want in zip(_fwd_bwd(f, x, w, dy), _fwd_bwd(exact, x, w, dy), strict=True):
        assert FP8_MIN_ERR < rel_err(got, want) < FP8_RTOL


def test_batched_matches_per_batch_recipe():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 20, 150)).astype(np.float32)
    w = (rng.standard_normal((3, 150, 130)) * 0.1).astype(np.float32)
    dy = rng.standard_normal((3, 20, 130)).astype(np.float32)
    y, dx, dw = _fwd_bwd(fp8_linear.fp8_matmul, x, w, dy)
    for b in range(3):
        for got, want in zip((y[b], dx[b], dw[b]), _np_fp8_matmul_grads(x[b], w[b], dy[b]), strict=True):
            assert rel_err(got, want) < TIGHT


def test_bfloat16_dtypes_and_saturation():
    """bf16 in/out, grads in the input dtypes, and outliers (1e4 next to 1e-3) stay finite."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 256)).astype(np.float32)
    x[3, 7], x[4, 100] = 1e4, -3e4
    w = jnp.asarray(rng.standard_normal((256, 128)) * 0.05, jnp.bfloat16)
    f = lambda a, b: fp8_linear.fp8_einsum("md,dn->mn", a, b, jnp.bfloat16)
    y, dx, dw = _fwd_bwd(f, jnp.asarray(x, jnp.bfloat16), w, jnp.ones((16, 128), jnp.bfloat16))
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16,) * 3
    assert all(bool(jnp.isfinite(a.astype(jnp.float32)).all()) for a in (y, dx, dw))
    y_ref = np.asarray(x, np.float64) @ np.asarray(w.astype(jnp.float32), np.float64)
    assert rel_err(y.astype(jnp.float32), y_ref) < FP8_RTOL


def test_master_weight_gradient_not_rounded():
    """bf16 compute, fp32 master weight: W is quantised from its fp32 value and dW comes back in
    fp32 as the float64 recipe has it (a bf16 round trip would leave it ~1e-3 off)."""
    rng = np.random.default_rng(8)
    bf16_values = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))  # noqa: E731
    x = bf16_values(rng.standard_normal((40, 256)))
    w = (rng.standard_normal((256, 192)) * 0.05).astype(np.float32)
    dy = bf16_values(rng.standard_normal((40, 192)))
    f = lambda a, b: fp8_linear.fp8_einsum("md,dn->mn", a, b, jnp.bfloat16)  # noqa: E731
    y, dx, dw = _fwd_bwd(f, jnp.asarray(x, jnp.bfloat16), w, jnp.asarray(dy, jnp.bfloat16))
    y_ref, dx_ref, dw_ref = _np_fp8_matmul_grads(x, w, dy)
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
    assert rel_err(dw, dw_ref) < TIGHT
    # y and dx come back in the compute dtype: the recipe up to one bf16 rounding
    assert rel_err(y.astype(jnp.float32), y_ref) < 2**-8
    assert rel_err(dx.astype(jnp.float32), dx_ref) < 2**-8


@pytest.mark.parametrize(
    "equation, x_shape, w_shape",
    [("btd,dnh->btnh", (2, 5, 128), (128, 4, 32)), ("btnh,nhd->btd", (2, 5, 4, 32), (4, 32, 96))],
)
def test_einsum_is_the_flattened_matmul(equation, x_shape, w_shape):
    """Contraction dims flatten into K, so head-split weights quantise like their 2-D matrix."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape) * 0.1, jnp.float32)
    got = fp8_linear.fp8_einsum(equation, x, w, jnp.float32)
    k = int(np.prod(w_shape[: len(x_shape) - 2 if equation.startswith("btnh") else 1]))
    flat = fp8_linear.fp8_matmul(x.reshape(-1, k), w.reshape(k, -1))
    np.testing.assert_array_equal(np.asarray(got).reshape(flat.shape), np.asarray(flat))
    exact = jnp.einsum(equation, x, w, precision=jax.lax.Precision.HIGHEST)
    assert FP8_MIN_ERR < rel_err(got, exact) < FP8_RTOL
    np.testing.assert_array_equal(project(equation, x, w, jnp.float32, "fp8"), got)


@pytest.mark.parametrize("equation", ["btd,df", "btd,fd->btf", "bd,df->fb"])
def test_einsum_rejects_other_layouts(equation):
    with pytest.raises(ValueError, match="fp8_einsum"):
        fp8_linear.parse_projection(equation)


def test_unknown_impl_named():
    with pytest.raises(ValueError, match="unknown FP8 matmul impl 'nope'"):
        fp8_linear.fp8_matmul(jnp.ones((2, 4)), jnp.ones((4, 3)), impl="nope")


def test_tap_sees_every_projection():
    seen = []
    x, w = jnp.ones((2, 3, 8)), jnp.full((8, 5), 0.5)
    with fp8_linear.tap(lambda a, b, y: seen.append((a.shape, b.shape)) or y + 1.0):
        y = fp8_linear.fp8_einsum("btd,df->btf", x, w, jnp.float32)
    assert seen == [((6, 8), (8, 5))]
    np.testing.assert_allclose(y, 5.0)  # 8 * 0.5 = 4, plus the tap's 1
    assert fp8_linear._TAP.get() is None


def test_blocked_fp8_backend():
    """Forward = float64 FP8 recipe (rows quantise independently, so blocking cannot matter);
    gradients = the fake-quant pallas_fp8 recipe, FP8-level close to `dense`."""
    x, idx, combine, weights = random_moe_problem(2, 40, 128, 64, 4, 2)
    probe = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)

    def grads_of(name):
        def loss(x, c, w, idx, probe):
            y = expert_compute.get(name)(x, idx, c, w, dtype=jnp.float32, block_size=16)
            return jnp.sum(y * probe), y

        args = (x, combine, ExpertWeights(*weights), idx, probe)
        fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
        return fn(*jax.tree.map(jnp.asarray, args))

    grads, y = grads_of("blocked_fp8")
    grads_ref, _ = grads_of("dense")
    assert rel_err(y, np_fp8_moe(x, idx, combine, weights)) < 1e-5
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        assert 0.03 < rel_err(g, g_ref) < 0.10  # error model: tests/ops/test_pallas_backends.py


def test_config_switch():
    assert model_config().fp8 is False
    assert expert_backend(model_config(fp8=True)) == "blocked_fp8"
    assert expert_backend(model_config(fp8=True, moe_backend="pallas_fp8")) == "pallas_fp8"
    assert expert_backend(model_config()) == "blocked"
    with pytest.raises(ConfigError, match="model.moe_backend: 'dense' has no FP8 form"):
        validate_model_config(model_config(fp8=True, moe_backend="dense"))
    with pytest.raises(ConfigError, match="model.fp8"):
        validate_model_config(model_config(fp8=1))


def test_model_runs_fp8_projections():
    """fp8=True: every QKV/output/MLP/shared projection goes through fp8_einsum (the tap counts
    them) and experts use blocked_fp8. The per-op numerics are checked above; end to end, the
    logits of 2 layers + MTP (7 chained FP8 projections per layer, measured 0.074 relative)
    only get a sanity bound."""
    cfg = get_preset("tiny")
    cfg.update(dict(num_hidden_layers=2, vocab_size=256, scan_layers=False))
    ids = jnp.asarray(np.random.default_rng(9).integers(0, 256, (2, 16)), jnp.int32)
    logits = {}
    for fp8 in (False, True):
        cfg.fp8 = fp8
        model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
        calls = []
        with fp8_linear.tap(lambda x, w, y, calls=calls: calls.append(x.shape) or y):
            logits[fp8] = nnx.jit(lambda m, i: m(i).logits)(model, ids)
        # dense layer: q k v o gate up down; MoE layer and MTP block: q k v o + shared gate up down
        assert len(calls) == (21 if fp8 else 0)
        assert model.moe_layers.mlp.backend == ("blocked_fp8" if fp8 else "blocked")
    err = rel_err(logits[True], logits[False])
    assert FP8_MIN_ERR < err < 0.15, err
