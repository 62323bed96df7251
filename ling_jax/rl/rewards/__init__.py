"""Rewards of the RL phase, chosen by name (math_answer, format, length, code_syntax,
code_function, code_aesthetics), and their combiner.

Example: `combine_rewards(RolloutGroup(completions, reference="42", lengths=lens), weights)`
returns the total reward [G] and each unweighted component [G] for logging.
"""

from __future__ import annotations

from ling_jax.rl.rewards.aesthetics import aesthetics_score, style_checks
from ling_jax.rl.rewards.code import execute_groups, parses, program_of
from ling_jax.rl.rewards.combine import (
    CODE_WEIGHTS,
    DEFAULT_WEIGHTS,
    REWARDS,
    RewardFn,
    combine_rewards,
    get,
    score_groups,
)
from ling_jax.rl.rewards.format_marker import format_reward
from ling_jax.rl.rewards.group import RolloutGroup
from ling_jax.rl.rewards.length import length_reward, length_score
from ling_jax.rl.rewards.math_answer import extract_answer, is_correct, math_answer_reward
from ling_jax.rl.rewards.numbers import parse_number

__all__ = [
    "CODE_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "REWARDS",
    "RewardFn",
    "RolloutGroup",
    "aesthetics_score",
    "execute_groups",
    "parses",
    "program_of",
    "style_checks",
    "combine_rewards",
    "extract_answer",
    "format_reward",
    "get",
    "is_correct",
    "length_reward",
    "length_score",
    "math_answer_reward",
    "parse_number",
    "score_groups",
]
