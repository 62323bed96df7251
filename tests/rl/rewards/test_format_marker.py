"""format reward: -0.5 when a think marker appears."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ling_jax.rl.rewards import RolloutGroup, format_reward


def test_think_markers_are_penalised():
    group = RolloutGroup(["plain answer", "<think>hmm</think> 4", "trailing </think>", "<THINK>"])
    np.testing.assert_array_equal(format_reward(group), [0.0, -0.5, -0.5, 0.0])
    np.testing.assert_array_equal(format_reward(group, ignore_case=True), [0.0, -0.5, -0.5, -0.5])
    custom = format_reward(group, markers=("hmm",), penalty=-1.0)
    np.testing.assert_array_equal(custom, [0.0, -1.0, 0.0, 0.0])


def test_bad_markers_and_large_inputs():
    with pytest.raises(ValueError, match="markers"):
        format_reward(RolloutGroup(["x"]), markers="<think>")
    with pytest.raises(ValueError, match="markers"):
        format_reward(RolloutGroup(["x"]), markers=("",))
    big = RolloutGroup(["<" * 1_000_000 + "think>", "\x00" * 1_000_000])
    start = time.process_time()  # CPU time of this process: other jobs on the machine don't count
    np.testing.assert_array_equal(format_reward(big), [-0.5, 0.0])
    assert time.process_time() - start < 0.1
