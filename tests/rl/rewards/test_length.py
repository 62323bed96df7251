"""Dynamic length reward of reference §7.2 against hand values and a NumPy formula."""

from __future__ import annotations

import numpy as np
import pytest

from ling_jax.rl.rewards import RolloutGroup, length_reward, length_score


def test_hand_values_pool_all_and_correct():
    lengths, correct = [10, 20, 30, 40], [True, False, True, False]
    # pool all: p = 0.5 - (l - 10) / 30 -> [0.5, 1/6, -1/6, -0.5]; wrong ones capped at 0.
    np.testing.assert_allclose(
        length_score(lengths, correct), [0.5, 0.0, -1 / 6, -0.5], rtol=1e-8, atol=1e-12
    )
    # pool correct: l in {10, 30}: p = 0.5 - (l - 10) / 20 -> [0.5, 0, -0.5, -1].
    np.testing.assert_allclose(
        length_score(lengths, correct, pool="correct"), [0.5, 0.0, -0.5, -1.0], rtol=1e-8
    )


def test_matches_formula_on_random_groups():
    rng = np.random.default_rng(3)
    for _ in range(20):
        lengths = rng.integers(1, 500, size=8)
        correct = rng.uniform(size=8) < 0.5
        p = 0.5 - (lengths - lengths.min()) / (lengths.max() - lengths.min() + 1e-9)
        expected = np.where(correct, p, np.minimum(p, 0.0))
        np.testing.assert_allclose(length_score(lengths, correct), expected, rtol=1e-12)


def test_degenerate_groups():
    # Equal lengths: p = 0.5 for all; correct keep it, wrong get min(0.5, 0) = 0.
    np.testing.assert_allclose(length_score([7, 7, 7], [True, False, True]), [0.5, 0.0, 0.5])
    # pool="correct" with nothing correct: no reference lengths, reward 0.
    np.testing.assert_array_equal(length_score([3, 9], [False, False], pool="correct"), [0, 0])
    with pytest.raises(ValueError, match="pool"):
        length_score([1], [True], pool="median")


def test_alpha_per_difficulty_and_correctness_from_math_answer():
    group = RolloutGroup(["#### 4", "#### 5", "#### 4"], reference="4", lengths=[5, 15, 25])
    table = {"easy": 1.0, "hard": 0.25}
    base = np.array([0.5, 0.0, -0.5])  # p = [0.5, 0, -0.5]; the wrong middle one min(0, 0)
    np.testing.assert_allclose(length_reward(group, alpha=0.3), 0.3 * base, atol=1e-9)
    hard = RolloutGroup(group.completions, "4", group.lengths, difficulty="hard")
    got = length_reward(hard, alpha_by_difficulty=table)
    np.testing.assert_allclose(got, 0.25 * base, atol=1e-9)
    given = RolloutGroup(group.completions, "4", group.lengths, correct=[False, False, True])
    np.testing.assert_allclose(length_reward(given), [0.0, 0.0, -0.5], atol=1e-9)
    with pytest.raises(ValueError, match="difficulty 'medium' has no alpha"):
        length_reward(RolloutGroup(["a"], "1", [1], "medium"), alpha_by_difficulty=table)
    with pytest.raises(ValueError, match="lengths"):
        length_reward(RolloutGroup(["a"], "1"))
    with pytest.raises(ValueError, match="one entry per completion"):
        RolloutGroup(["a", "b"], "1", lengths=[1])
