"""Group z-score advantages against NumPy float64."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ling_jax.rl.advantages import group_advantages


@pytest.mark.parametrize("ddof", [0, 1])
def test_matches_numpy(ddof):
    rewards = np.random.default_rng(0).normal(size=(5, 8)) * 3.0 + 1.0
    expected = (rewards - rewards.mean(1, keepdims=True)) / (
        rewards.std(1, ddof=ddof, keepdims=True) + 1e-6
    )
    got = jax.jit(lambda r: group_advantages(r, ddof=ddof))(rewards.astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got).mean(1), 0.0, atol=1e-6)


def test_zero_variance_groups_are_exactly_zero_and_binary_rewards():
    rewards = np.array([[0.1, 0.1, 0.1, 0.1], [1.0, 0.0, 0.0, 0.0], [-0.5, -0.5, -0.5, -0.5]])
    got = np.asarray(group_advantages(rewards))
    assert np.all(got[0] == 0.0) and np.all(got[2] == 0.0)
    # One correct of four: (1 - 0.25) / sqrt(0.1875) and (0 - 0.25) / sqrt(0.1875).
    s = np.sqrt(0.1875)
    np.testing.assert_allclose(got[1], [0.75 / (s + 1e-6)] + [-0.25 / (s + 1e-6)] * 3, rtol=1e-6)


def test_eps_bounds_tiny_spreads():
    got = np.asarray(group_advantages(np.array([[0.0, 1e-7]]), eps=1e-6))
    np.testing.assert_allclose(got, [[-0.5e-7 / 1.05e-6, 0.5e-7 / 1.05e-6]], rtol=1e-4)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"rewards must be \[P, G\]"):
        group_advantages(np.zeros(4))
    with pytest.raises(ValueError, match="ddof"):
        group_advantages(np.zeros((2, 1)), ddof=1)
