"""The verifiable tasks an rl phase trains on, chosen by its data source's kind.

A task gives the phase its prompts (by index, split, seed, difficulty), turns one prompt's G
completions into a RolloutGroup for the rewards, and judges greedy responses for held-out accuracy:
  builtin_arithmetic  word problems, correct = the final "#### N" equals the answer
  builtin_code        Python functions (ling_jax.data.code_tasks), correct = all tests pass in the
                      sandbox (held-out pass@1 with greedy decoding)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ling_jax.data import arithmetic, code_tasks
from ling_jax.rl.rewards import RolloutGroup, execute_groups, is_correct


def _arithmetic_group(problem, completions: Sequence[str], lengths: Sequence[int]) -> RolloutGroup:
    return RolloutGroup(completions=completions, reference=problem.answer, lengths=lengths,
                        difficulty=problem.difficulty)


def _arithmetic_correct(texts: Sequence[str], problems: Sequence, **_) -> np.ndarray:
    return np.asarray([is_correct(t, p.answer, extractors=("hashes",))
                       for t, p in zip(texts, problems, strict=True)], bool)


def _code_group(problem, completions: Sequence[str], lengths: Sequence[int]) -> RolloutGroup:
    return RolloutGroup(completions=completions, lengths=lengths, difficulty=problem.difficulty,
                        task=problem)


def _code_correct(texts: Sequence[str], problems: Sequence, **sandbox) -> np.ndarray:
    """All tests pass, one sandbox job per (text, task), through one bounded pool."""
    groups = [RolloutGroup([t], task=p) for t, p in zip(texts, problems, strict=True)]
    return np.asarray([g.correct[0] for g in execute_groups(groups, **sandbox)], bool)


@dataclasses.dataclass(frozen=True)
class RLTask:
    """One task kind: problems, reward groups, correctness and its default rewards."""

    kind: str
    levels: tuple[int, ...]
    problem: Callable[..., Any]  # problem(index, split=, seed=, difficulty=)
    group: Callable[[Any, Sequence[str], Sequence[int]], RolloutGroup]
    correct: Callable[..., np.ndarray]  # correct(texts, problems, **sandbox) -> [n] bool
    metric: str  # what `correct` measures, for reports

    def problems(self, split: str, n: int, difficulty: int | Sequence[int],
                 seed: int = 0) -> list:
        """The first n problems of a split (difficulty levels cycled per problem)."""
        levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
        return [self.problem(i, split=split, seed=seed, difficulty=levels[i % len(levels)])
                for i in range(n)]


TASKS: dict[str, RLTask] = {
    "builtin_arithmetic": RLTask("builtin_arithmetic", tuple(arithmetic.DIFFICULTY_LEVELS),
                                 arithmetic.arithmetic_problem, _arithmetic_group,
                                 _arithmetic_correct, "exact match"),
    "builtin_code": RLTask("builtin_code", tuple(code_tasks.DIFFICULTY_LEVELS),
                           code_tasks.code_task, _code_group, _code_correct, "pass@1"),
}


def get_task(kind: str) -> RLTask:
    """The task of a data source kind."""
    if kind not in TASKS:
        raise ValueError(f"an rl phase needs one source of kind {sorted(TASKS)}, got {kind!r}")
    return TASKS[kind]
