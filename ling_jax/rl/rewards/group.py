"""What a reward function sees: the G sampled responses of one prompt plus their metadata."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class RolloutGroup:
    """One prompt's group of G completions.

    reference: ground-truth final answer (math_answer). lengths: response token counts (length).
    difficulty: key into the length reward's alpha table. correct: precomputed correctness
    (length); combine_rewards fills it from math_answer when the length reward is used, or from
    the code tests. task: a code task (ling_jax.data.code_tasks.CodeTask) for the code rewards;
    executions: its sandbox result per completion (filled by rewards.code.execute_groups).
    """

    completions: Sequence[str]
    reference: str | None = None
    lengths: Sequence[int] | None = None
    difficulty: Hashable | None = None
    correct: Sequence[bool] | None = None
    task: Any = None
    executions: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.completions, str) or not all(
            isinstance(c, str) for c in self.completions
        ):
            raise ValueError("RolloutGroup.completions must be a sequence of decoded str responses")
        g = len(self.completions)
        for name in ("lengths", "correct", "executions"):
            value = getattr(self, name)
            if value is not None and len(value) != g:
                raise ValueError(f"RolloutGroup.{name} must have one entry per completion ({g})")
        if self.reference is not None and not isinstance(self.reference, str):
            raise ValueError("RolloutGroup.reference must be a str (the final answer)")
