"""Reward registry and the weighted combiner: R = sum_name weight_name * component_name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ling_jax.rl.rewards.code import (
    code_aesthetics_reward,
    code_function_reward,
    code_syntax_reward,
    execute_groups,
)
from ling_jax.rl.rewards.format_marker import format_reward
from ling_jax.rl.rewards.group import RolloutGroup
from ling_jax.rl.rewards.length import length_reward
from ling_jax.rl.rewards.math_answer import math_answer_reward

RewardFn = Callable[..., np.ndarray]  # fn(group: RolloutGroup, **params) -> float64 [G]
REWARDS: dict[str, RewardFn] = {
    "math_answer": math_answer_reward,
    "format": format_reward,
    "length": length_reward,
    "code_syntax": code_syntax_reward,
    "code_function": code_function_reward,
    "code_aesthetics": code_aesthetics_reward,
}
DEFAULT_WEIGHTS = {"math_answer": 1.0, "format": 1.0, "length": 1.0}
CODE_WEIGHTS = {"code_syntax": 0.2, "code_function": 1.0, "code_aesthetics": 0.1}
SANDBOX_PARAMS = ("workers", "isolation", "cpu_seconds", "wall_seconds", "memory_bytes",
                  "file_bytes", "processes")  # code_function params that configure the sandbox


def get(name: str) -> RewardFn:
    """The reward function registered under `name`."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}: choose from {sorted(REWARDS)}")
    return REWARDS[name]


def _check_names(weights: Mapping[str, float], params: Mapping[str, Any]) -> None:
    for field, names in (("weights", weights), ("params", params)):
        unknown = sorted(set(names) - set(REWARDS))
        if unknown:
            raise ValueError(f"reward {field}: unknown names {unknown}; use {sorted(REWARDS)}")


def _executed(groups: Sequence[RolloutGroup], weights: Mapping[str, float],
              params: Mapping[str, Mapping[str, Any]]) -> list[RolloutGroup]:
    """Code groups with their sandbox results when a weighted reward needs them."""
    unknown = sorted(set(params.get("code_function", {})) - {*SANDBOX_PARAMS, "partial_credit"})
    if unknown:
        raise ValueError(f"reward params code_function: unknown field(s) {unknown}; use "
                         f"partial_credit and the sandbox's {list(SANDBOX_PARAMS)}")
    if not any(g.task is not None and g.executions is None for g in groups):
        return list(groups)
    if not {"code_function", "length"} & set(weights):
        return list(groups)
    given = dict(params.get("code_function", {}))
    return execute_groups(groups, **{k: v for k, v in given.items() if k in SANDBOX_PARAMS})


def combine_rewards(
    group: RolloutGroup,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Total reward [G] and the unweighted component of every weighted reward (for logging).

    params[name] holds the keyword arguments of reward `name`. Correctness for the length reward
    is computed once with math_answer's params, so both agree; for code groups (group.task set)
    it is "all tests pass" from the one sandbox run that code_function also reads.
    """
    params = dict(params or {})
    _check_names(weights, params)
    group = _executed([group], weights, params)[0]
    if "length" in weights and group.correct is None and group.reference is not None:
        correct = math_answer_reward(group, **params.get("math_answer", {})) > 0
        group = dataclasses.replace(group, correct=tuple(bool(c) for c in correct))
    total = np.zeros(len(group.completions), dtype=np.float64)
    components: dict[str, np.ndarray] = {}
    for name, weight in weights.items():
        components[name] = REWARDS[name](group, **params.get(name, {}))
        total += float(weight) * components[name]
    return total, components


def score_groups(
    groups: Sequence[RolloutGroup],
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """combine_rewards over P >= 1 groups of one size G: rewards [P, G], components [P, G]."""
    sizes = {len(g.completions) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"groups must be non-empty with one completion count G, got sizes {sizes}")
    _check_names(weights, params or {})
    groups = _executed(groups, weights, params or {})  # all programs through one sandbox pool
    scored = [combine_rewards(g, weights, params) for g in groups]
    rewards = np.stack([total for total, _ in scored])
    components = {name: np.stack([parts[name] for _, parts in scored]) for name in weights}
    return rewards, components
