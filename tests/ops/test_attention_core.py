"""Attention with the hand-written backward against a plain autodiff reference and float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.model.attention import attention_mask
from ling_jax.ops.attention_core import dot_product_attention
from ling_jax.ops.attention_mask import dense_mask


def _reference(q, k, v, mask):
    """Plain softmax attention in fp32 with autodiff (GQA by repeating KV heads)."""
    groups = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(a, groups, axis=2) for a in (k, v))
    s = jnp.einsum("btnh,bsnh->bnts", q, k, precision="highest") / np.sqrt(q.shape[-1])
    s = jnp.where(mask, s, -1e30)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, -1), v, precision="highest")


def _problem(seed=0, batch=2, length=9, heads=4, kv=2, dim=8):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, length, heads, dim)).astype(np.float32)
    k = rng.normal(size=(batch, length, kv, dim)).astype(np.float32)
    v = rng.normal(size=(batch, length, kv, dim)).astype(np.float32)
    seg = np.ones((batch, length), np.int32)
    seg[0, 4:] = 2  # two packed documents in row 0
    seg[1, -2:] = 0  # padding at the end of row 1
    probe = rng.normal(size=q.shape).astype(np.float32)
    return q, k, v, dense_mask(attention_mask(jnp.asarray(seg), batch, length)), probe


def test_forward_matches_float64_numpy():
    q, k, v, mask, _ = _problem()
    m = np.asarray(mask)[:, 0]
    kk, vv = (np.repeat(a.astype(np.float64), 2, axis=2) for a in (k, v))
    s = np.einsum("btnh,bsnh->bnts", q.astype(np.float64), kk) / np.sqrt(8)
    s = np.where(m[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = np.einsum("bnts,bsnh->btnh", p / p.sum(-1, keepdims=True), vv)
    got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_gradients_match_autodiff(dtype, tol):
    q, k, v, mask, probe = _problem(seed=1)
    args = tuple(jnp.asarray(a) for a in (q, k, v))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask)
                       .astype(jnp.float32) * probe)

    got = jax.grad(lambda *a: loss(dot_product_attention, *a), argnums=(0, 1, 2))(*args)
    want = jax.grad(lambda *a: loss(_reference, *a), argnums=(0, 1, 2))(*args)
    for g, w in zip(got, want, strict=True):
        assert float(jnp.linalg.norm(g - w) / jnp.linalg.norm(w)) < tol


def test_fewer_queries_than_keys_forward_and_gradients():
    """Decode-style shapes (3 new queries over 9 cached keys): the transposed-score path of the
    backward must use the transposed [S, T] mask, not a square one."""
    q, k, v, _, _ = _problem(seed=2)
    q, probe = q[:, -3:], np.random.default_rng(3).normal(size=q[:, -3:].shape).astype(np.float32)
    seg = np.ones((2, 9), np.int32)
    seg[0, :5] = 7  # row 0: the queries' document starts at key 5
    same = seg[:, None, -3:, None] == seg[:, None, None, :]
    mask = jnp.asarray(same & (np.arange(9)[None, None, None, :] <= np.arange(6, 9)[:, None]))
    args = tuple(jnp.asarray(a) for a in (q, k, v))
    got = dot_product_attention(*args, mask)
    np.testing.assert_allclose(got, _reference(*args, mask), rtol=1e-5, atol=1e-5)

    def loss(fn, *a):
        return jnp.sum(fn(*a, mask) * probe)

    grads = jax.grad(lambda *a: loss(dot_product_attention, *a), argnums=(0, 1, 2))(*args)
    want = jax.grad(lambda *a: loss(_reference, *a), argnums=(0, 1, 2))(*args)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
