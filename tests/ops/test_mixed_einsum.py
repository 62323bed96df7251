"""mixed_einsum: bf16 operands with fp32 accumulation in both directions, against fp32 autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.ops.mixed_einsum import mixed_einsum

CASES = [
    ("btd,dnh->btnh", (2, 5, 16), (16, 3, 8)),
    ("btnh,nhd->btd", (2, 5, 3, 8), (3, 8, 16)),
    ("nbd,ndf->nbf", (4, 6, 16), (4, 16, 8)),
    ("btkgh,bskh->bkgts", (2, 5, 2, 3, 8), (2, 7, 2, 8)),
]


def _grads(eq, x, w, dtype, probe):
    return jax.grad(lambda x, w: jnp.sum(mixed_einsum(eq, x, w, dtype) * probe), argnums=(0, 1))(x, w)


@pytest.mark.parametrize("eq,xs,ws", CASES)
def test_matches_float32_autodiff(eq, xs, ws):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=xs), jnp.float32)
    w = jnp.asarray(rng.normal(size=ws), jnp.float32)
    out_shape = jax.eval_shape(lambda: jnp.einsum(eq, x, w)).shape
    probe = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    ref = jax.grad(lambda x, w: jnp.sum(jnp.einsum(eq, x, w, precision="highest") * probe),
                   argnums=(0, 1))(x, w)
    np.testing.assert_allclose(mixed_einsum(eq, x, w, jnp.float32),
                               jnp.einsum(eq, x, w, precision="highest"), rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(eq, x, w, jnp.float32, probe), ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for got, want, primal in zip(_grads(eq, x, w, jnp.bfloat16, probe), ref, (x, w), strict=True):
        assert got.dtype == primal.dtype  # an fp32 master weight keeps an fp32 gradient
        assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-2


def test_bfloat16_operand_gets_bfloat16_gradient():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    dx, dw = jax.grad(lambda x, w: mixed_einsum("td,df->tf", x, w, jnp.bfloat16).sum(),
                      argnums=(0, 1))(x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dw, np.float32),
                               np.asarray(x, np.float32).sum(0)[:, None].repeat(3, 1), rtol=1e-2)


def test_unsupported_equation_falls_back_to_einsum():
    x = jnp.arange(6.0).reshape(2, 3)
    w = jnp.arange(3.0)
    got = jax.grad(lambda x: mixed_einsum("ij,j->i", x, w, jnp.bfloat16).sum())(x)
    np.testing.assert_allclose(got, np.broadcast_to(np.arange(3.0), (2, 3)))
    # "ii,..." repeats an index: no custom rule, plain einsum.
    y = mixed_einsum("ii,i->i", jnp.eye(3), jnp.ones(3), jnp.bfloat16)
    np.testing.assert_allclose(y, np.ones(3))
