"""Reward registry and weighted combination."""

from __future__ import annotations

import numpy as np
import pytest

from ling_jax.rl import rewards
from ling_jax.rl.rewards import RolloutGroup, combine_rewards, score_groups

GROUP = RolloutGroup(
    ["<think>x</think> #### 4", "#### 4", "#### 3", "\\boxed{4}"],
    reference="4",
    lengths=[40, 10, 20, 30],
)


def test_registry():
    assert sorted(rewards.REWARDS) == ["code_aesthetics", "code_function", "code_syntax",
                                       "format", "length", "math_answer"]
    assert rewards.get("format") is rewards.format_reward
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        rewards.get("bleu")


def test_weighted_sum_and_components():
    weights = {"math_answer": 1.0, "format": 2.0, "length": 0.5}
    total, parts = combine_rewards(GROUP, weights)
    correct = np.array([1.0, 1.0, 0.0, 1.0])
    fmt = np.array([-0.5, 0.0, 0.0, 0.0])
    p = 0.5 - (np.array([40, 10, 20, 30]) - 10) / (30 + 1e-9)  # [-0.5, 0.5, 1/6, -1/6]
    length = np.where(correct > 0, p, np.minimum(p, 0.0))
    assert set(parts) == set(weights)
    np.testing.assert_allclose(parts["math_answer"], correct)
    np.testing.assert_allclose(parts["format"], fmt)
    np.testing.assert_allclose(parts["length"], length, atol=1e-9)
    np.testing.assert_allclose(total, correct + 2.0 * fmt + 0.5 * length, atol=1e-9)


def test_params_reach_each_reward_and_length_uses_the_same_correctness():
    params = {"math_answer": {"extractors": ("boxed",)}, "format": {"penalty": -1.0}}
    weights = {"math_answer": 1.0, "format": 1.0, "length": 1.0}
    total, parts = combine_rewards(GROUP, weights, params)
    np.testing.assert_allclose(parts["math_answer"], [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(parts["format"], [-1.0, 0.0, 0.0, 0.0])
    # Only the boxed one counts as correct now: p = [-0.5, 0.5, 1/6, -1/6] -> wrong ones <= 0.
    np.testing.assert_allclose(parts["length"], [-0.5, 0.0, 0.0, -1 / 6], atol=1e-9)
    np.testing.assert_allclose(total, [0 - 1.0 - 0.5, 0.0, 0.0, 1 - 1 / 6], atol=1e-9)
    with pytest.raises(ValueError, match="unknown names"):
        combine_rewards(GROUP, {"math": 1.0})
    with pytest.raises(ValueError, match="unknown names"):
        combine_rewards(GROUP, {"format": 1.0}, {"lenght": {}})


def test_score_groups_stacks_prompts():
    other = RolloutGroup(["#### 1", "#### 2", "#### 2", "2"], reference="2", lengths=[1, 2, 3, 4])
    total, parts = score_groups([GROUP, other], {"math_answer": 1.0, "format": 1.0})
    assert total.shape == (2, 4) and parts["math_answer"].shape == (2, 4)
    np.testing.assert_allclose(parts["math_answer"][1], [0.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(total[0], combine_rewards(GROUP, {"math_answer": 1, "format": 1})[0])
    with pytest.raises(ValueError, match="one completion count"):
        score_groups([GROUP, RolloutGroup(["#### 1"], reference="1")])
