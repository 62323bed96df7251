"""Expert-bias update and load metrics against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.train.balancing import expert_token_counts, load_metrics, update_expert_bias


def _ref_update(bias, counts, rate):
    c = counts.astype(np.float64)
    s = np.sign(c.mean(axis=-1, keepdims=True) - c)
    return bias.astype(np.float64) + rate * (s - s.mean(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def jit_update():
    return jax.jit(update_expert_bias)


@pytest.mark.parametrize("shape", [(16,), (3, 16), (2, 4, 32)])
def test_update_matches_numpy(jit_update, shape):
    rng = np.random.default_rng(sum(shape))
    counts = rng.integers(0, 1000, size=shape)
    # Ties: make a quarter of the experts in each layer sit exactly at the layer mean.
    e = shape[-1]
    flat = counts.reshape(-1, e)
    for row in flat:
        q = e // 4
        # The layer mean becomes the integer m; q experts sit exactly at it.
        m = int(row[q:].mean().round())
        row[:q] = m
        row[q] += (m * e) - row.sum()  # fix the total so that mean(row) == m exactly
        assert row.mean() == m and row[q] >= 0
    counts = flat.reshape(shape)
    bias = rng.normal(scale=1e-2, size=shape).astype(np.float32)
    got = jit_update(bias, counts, 1e-3)
    assert got.dtype == jnp.float32
    want = _ref_update(bias, counts, 1e-3)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=1e-8)
    # Zero-mean per layer: the update moves biases but not their layer mean.
    delta = np.asarray(got, np.float64) - bias
    np.testing.assert_allclose(delta.sum(axis=-1), 0.0, atol=1e-8)
    assert np.sum(np.sign(counts.mean(axis=-1, keepdims=True) - counts) == 0) >= e // 4


def test_tie_gets_zero_sign():
    # c = (1, 3, 5): mean 3, e = (2, 0, -2), sign = (1, 0, -1), mean sign 0 -> Δ = u·(1, 0, -1).
    got = update_expert_bias(jnp.zeros(3), jnp.array([1, 3, 5]), 0.5)
    np.testing.assert_allclose(np.asarray(got), [0.5, 0.0, -0.5])
    # Unequal numbers of over/under-loaded experts: (0, 0, 0, 4): signs (1,1,1,-1), mean 0.5.
    got = update_expert_bias(jnp.zeros(4), jnp.array([0, 0, 0, 4]), 1.0)
    np.testing.assert_allclose(np.asarray(got), [0.5, 0.5, 0.5, -1.5])
    # Perfect balance leaves the bias as it is.
    b = jnp.array([0.1, -0.2, 0.3], jnp.bfloat16)
    np.testing.assert_allclose(
        np.asarray(update_expert_bias(b, jnp.array([7, 7, 7]), 1e-3)), np.asarray(b, np.float32)
    )


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="expert bias shape"):
        update_expert_bias(jnp.zeros((2, 8)), jnp.zeros((8,)), 1e-3)


def _ref_metrics(counts):
    c = counts.astype(np.float64)
    mean = c.mean(-1)
    return {
        "max_min_ratio": c.max(-1) / np.maximum(c.min(-1), 1.0),
        "cv": np.where(mean > 0, c.std(-1) / np.where(mean > 0, mean, 1), 0.0),
        "max_violation": np.where(mean > 0, (c.max(-1) - mean) / np.where(mean > 0, mean, 1), 0),
        "dead_experts": (c == 0).sum(-1),
    }


def test_load_metrics_match_numpy():
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 50, size=(5, 32))
    counts[1, :7] = 0  # dead experts
    counts[2] = 0  # a layer that saw no token
    counts[3] = 9  # perfectly balanced
    got = jax.jit(load_metrics)(counts)
    want = _ref_metrics(counts)
    for name, value in want.items():
        assert got[name].shape == (5,)
        np.testing.assert_allclose(
            np.asarray(got[name], np.float64), value, rtol=1e-6, err_msg=name
        )
    assert list(np.asarray(got["dead_experts"]))[1:4] == [
        int((counts[1] == 0).sum()),
        32,
        0,
    ]
    assert float(got["cv"][3]) == 0.0 and float(got["max_min_ratio"][3]) == 1.0


def test_expert_token_counts_match_bincount():
    rng = np.random.default_rng(11)
    layers, n, k, e = 3, 40, 4, 16
    ids = np.stack(
        [[rng.choice(e, size=k, replace=False) for _ in range(n)] for _ in range(layers)]
    )
    mask = rng.random(n) > 0.3
    got = jax.jit(expert_token_counts, static_argnums=1)(ids, e, mask)
    want = np.stack([np.bincount(ids[i][mask].ravel(), minlength=e) for i in range(layers)])
    np.testing.assert_array_equal(np.asarray(got), want)
    assert int(np.asarray(got).sum()) == layers * int(mask.sum()) * k
    no_mask = expert_token_counts(ids[0], e)
    np.testing.assert_array_equal(np.asarray(no_mask), np.bincount(ids[0].ravel(), minlength=e))
