"""Dynamic length reward R_length [reference §7.2, after Kimi k1.5's length penalty].

Within one prompt's group with lengths l_k: p(l) = 0.5 - (l - l_min) / (l_max - l_min + 1e-9);
R_hat = p(l) if correct else min(p(l), 0); R_length = alpha * R_hat, alpha per difficulty (larger
for easy tasks to push brevity). l_min/l_max run over the whole group (pool="all", the
reference's "lengths l_k" of the group's samples) or only its correct responses (pool="correct":
wrong ones may then fall below -0.5, floored at P_FLOOR = -1 — without the floor, a group whose
correct responses share one length divides by 1e-9 and scores longer wrong ones ~-1e9; a group
with no correct response gets 0).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import numpy as np

from ling_jax.rl.rewards.group import RolloutGroup
from ling_jax.rl.rewards.math_answer import math_answer_reward

LENGTH_EPS = 1e-9
P_FLOOR = -1.0  # only reachable with pool="correct" (pool="all" keeps p in [-0.5, 0.5])
POOLS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "all": lambda lengths, correct: lengths,
    "correct": lambda lengths, correct: lengths[correct],
}


def length_score(lengths: np.ndarray, correct: np.ndarray, *, pool: str = "all") -> np.ndarray:
    """R_hat of §7.2 for one group (float64 [G]), before the alpha scale."""
    if pool not in POOLS:
        raise ValueError(f"length reward pool must be one of {sorted(POOLS)}, got {pool!r}")
    lengths = np.asarray(lengths, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    ref = POOLS[pool](lengths, correct)
    if ref.size == 0:
        return np.zeros_like(lengths)
    l_min, l_max = ref.min(), ref.max()
    p = np.maximum(0.5 - (lengths - l_min) / (l_max - l_min + LENGTH_EPS), P_FLOOR)
    return np.where(correct, p, np.minimum(p, 0.0))


def _alpha(difficulty: Hashable | None, alpha: float, table: Mapping | None) -> float:
    if table is None or difficulty is None:
        return alpha
    if difficulty not in table:
        raise ValueError(
            f"difficulty {difficulty!r} has no alpha: add it to alpha_by_difficulty "
            f"(known: {sorted(table, key=str)})"
        )
    return float(table[difficulty])


def length_reward(
    group: RolloutGroup,
    *,
    alpha: float = 1.0,
    alpha_by_difficulty: Mapping[Hashable, float] | None = None,
    pool: str = "all",
) -> np.ndarray:
    """alpha * R_hat for each completion ([G]); needs group.lengths (token counts).

    Correctness comes from group.correct, else from math_answer with its default settings.
    """
    if group.lengths is None:
        raise ValueError("the length reward needs RolloutGroup.lengths (response token counts)")
    correct = group.correct
    if correct is None:
        correct = math_answer_reward(group) > 0
    a = _alpha(group.difficulty, alpha, alpha_by_difficulty)
    return a * length_score(np.asarray(group.lengths), np.asarray(correct), pool=pool)
