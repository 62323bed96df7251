"""Format reward R_format [reference §7.2]: a penalty when a forbidden think marker appears."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ling_jax.rl.rewards.group import RolloutGroup

DEFAULT_MARKERS = ("<think>", "</think>")
DEFAULT_PENALTY = -0.5


def format_reward(
    group: RolloutGroup,
    *,
    markers: Sequence[str] = DEFAULT_MARKERS,
    penalty: float = DEFAULT_PENALTY,
    ignore_case: bool = False,
) -> np.ndarray:
    """`penalty` for each completion containing any of `markers`, else 0.0 ([G])."""
    if isinstance(markers, str) or not all(isinstance(m, str) and m for m in markers):
        raise ValueError(f"markers must be a sequence of non-empty strings, got {markers!r}")
    wanted = [m.casefold() for m in markers] if ignore_case else list(markers)

    def has_marker(text: str) -> bool:
        text = text.casefold() if ignore_case else text
        return any(m in text for m in wanted)  # substring search: linear, never raises

    return np.array(
        [penalty if has_marker(c) else 0.0 for c in group.completions], dtype=np.float64
    )
