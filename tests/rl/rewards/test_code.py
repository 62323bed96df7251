"""The code rewards on hand-made completions: correct, wrong, partly right, syntax errors."""

import numpy as np
import pytest

from ling_jax.data.code_tasks import CodeTask
from ling_jax.rl.rewards import (
    CODE_WEIGHTS,
    RolloutGroup,
    aesthetics_score,
    combine_rewards,
    score_groups,
    style_checks,
)

TASK = CodeTask(prompt='def add_3(x):\n    """Return x plus 3."""\n', completion="    return x + 3\n",
                entry_point="add_3", args=((1,), (-4,), (10,), (0,)), expected=(4, -1, 13, 3),
                difficulty=1)
COMPLETIONS = [
    "    return x + 3\n",  # correct
    "    return 3 + x if x != 10 else 0\n",  # 3 of 4
    "    return x - 3\n",  # wrong
    "    return (x +\n",  # syntax error
    "    y = x + 3\n    unused = 1\n    return y\n",  # correct, with an unused name
]


@pytest.fixture(scope="module")
def scored():
    group = RolloutGroup(COMPLETIONS, task=TASK, lengths=[6, 14, 6, 5, 16])
    weights = {**CODE_WEIGHTS, "length": 1.0}
    return combine_rewards(group, weights, {"length": {"alpha": 0.5}})


def test_components_on_hand_made_completions(scored):
    total, parts = scored
    np.testing.assert_array_equal(parts["code_syntax"], [1, 1, 1, 0, 1])
    np.testing.assert_array_equal(parts["code_function"], [1, 0.75, 0, 0, 1])
    assert parts["code_aesthetics"][3] == 0.0 and parts["code_aesthetics"][0] == 1.0
    assert parts["code_aesthetics"][4] < 1.0  # `unused` is never read
    # Length reward with correctness from the tests: only completions 0 and 4 are correct.
    lengths = np.array([6, 14, 6, 5, 16], float)
    p = 0.5 - (lengths - 5) / (16 - 5 + 1e-9)
    correct = np.array([1, 0, 0, 0, 1], bool)
    np.testing.assert_allclose(parts["length"], 0.5 * np.where(correct, p, np.minimum(p, 0)))
    expected = sum(w * parts[k] for k, w in {**CODE_WEIGHTS, "length": 1.0}.items())
    np.testing.assert_allclose(total, expected)


def test_all_or_nothing_and_batched_groups_agree_with_single_groups(scored):
    groups = [RolloutGroup(COMPLETIONS, task=TASK), RolloutGroup(COMPLETIONS[::-1], task=TASK)]
    _, parts = score_groups(groups, {"code_function": 1.0},
                            {"code_function": {"partial_credit": False, "workers": 2}})
    np.testing.assert_array_equal(parts["code_function"][0], [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(parts["code_function"][1], [1, 0, 0, 0, 1][::-1])


def test_code_rewards_need_a_task_and_known_limits():
    with pytest.raises(ValueError, match="RolloutGroup.task"):
        combine_rewards(RolloutGroup(["x"]), {"code_syntax": 1.0})
    with pytest.raises(ValueError, match="unknown field"):
        combine_rewards(RolloutGroup(["    return 1\n"], task=TASK), {"code_function": 1.0},
                        {"code_function": {"cpu_secs": 1}})


def test_aesthetics_is_deterministic_and_reads_each_check():
    clean = 'def add(x):\n    """Add one."""\n    return x + 1\n'
    assert aesthetics_score(clean) == 1.0 == aesthetics_score(clean)
    messy = ("def AddOne(X):  \n    if X:\n        for i in range(3):\n            while X:\n"
             "                if i:\n                    tmp = 2\n                    X = X - 1\n"
             f"    return X + 1 # {'z' * 80}\n")
    checks = style_checks(messy)
    assert checks == style_checks(messy)
    assert checks["naming"] == pytest.approx(2 / 5)  # AddOne, X, X (store) bad; i, tmp good
    assert checks["docstring"] == 0.0 and checks["nesting"] == pytest.approx(3 / 5)
    assert checks["unused"] == pytest.approx(2 / 3)  # tmp is never read; i and X are
    assert checks["line_length"] == pytest.approx(7 / 8)
    assert checks["whitespace"] == pytest.approx(7 / 8)
    assert aesthetics_score(messy) == pytest.approx(sum(checks.values()) / 6)
    assert aesthetics_score("def f(:\n") == 0.0
