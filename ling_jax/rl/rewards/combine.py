"""Reward registry and the weighted combiner: R = sum_name weight_name * component_name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ling_jax.rl.rewards.format_marker import format_reward
from ling_jax.rl.rewards.group import RolloutGroup
from ling_jax.rl.rewards.length import length_reward
from ling_jax.rl.rewards.math_answer import math_answer_reward

RewardFn = Callable[..., np.ndarray]  # fn(group: RolloutGroup, **params) -> float64 [G]
REWARDS: dict[str, RewardFn] = {
    "math_answer": math_answer_reward,
    "format": format_reward,
    "length": length_reward,
}
DEFAULT_WEIGHTS = {"math_answer": 1.0, "format": 1.0, "length": 1.0}


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


def combine_rewards(
    group: RolloutGroup,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Total reward [G] and the unweighted component of every weighted reward (for logging).

    params[name] holds the keyword arguments of reward `name`. Correctness for the length reward
    is computed once with math_answer's params, so both agree.
    """
    params = dict(params or {})
    _check_names(weights, params)
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
    scored = [combine_rewards(g, weights, params) for g in groups]
    rewards = np.stack([total for total, _ in scored])
    components = {name: np.stack([parts[name] for _, parts in scored]) for name in weights}
    return rewards, components
