"""The `rl` block of an rl phase: fields, defaults, Evo-CoT stages and validation.

A phase of kind "rl" (see experiments/colab_tiny_rl.py) uses the common phase fields as:
  steps            RL steps (one step = rollouts + `epochs * minibatches` optimizer updates)
  batch_size       prompts per step (P); each gets `group_size` samples (N = P * G rows)
  seq_len          token buffer per row: `max_prompt_tokens` + the response buffer R
  data             one `builtin_arithmetic` or `builtin_code` source (ling_jax.rl.tasks): its
                   split, seed and num_docs give the prompts; code tasks take the code_* rewards
  lr               schedule over optimizer *updates* (K per RL step), from the phase's start
  bias_update_rate expert-bias update after every optimizer update (reference §4)
  microbatches     must stay 1 (rl.minibatches splits the rollouts)
and the `rl` block (every field optional):
  objective        grpo | gspo | lpo (ling_jax.rl.objectives); clip_eps / clip_eps_high: None
                   keeps the objective's default (lpo 0.03, grpo 0.2, gspo 3e-4 / 4e-4)
  group_size G, minibatches M (whole groups each), epochs E
  temperature, top_p, top_k   sampling; the importance ratio uses log_softmax(logits / T)
  kl_beta          k3 KL to the frozen policy of the phase start (0: off; logged vs. π_old anyway)
  advantage_eps    added to each group's reward std before dividing: a floor that keeps tiny
                   reward differences (e.g. length-only ones in an all-wrong group) from being
                   blown up to unit advantages
  reward_weights / reward_params   ling_jax.rl.rewards.combine_rewards (length alpha per stage)
  stages           Evo-CoT: [{steps, difficulty, max_response_tokens, length_alpha}, ...]; stage i
                   lasts `steps` RL steps, the last one runs to the end of the phase
  eval_every, eval_problems, eval_difficulty   held-out greedy accuracy (exact match / pass@1)
                   and mean response tokens
  reset_optimizer  start the phase from fresh AdamW moments (the LR schedule then counts this
                   phase's updates from 0); False carries the previous phases' optimizer state
                   (the schedule then starts at the phase's first global step, which equals the
                   carried update count after LM phases or rl phases with K = 1)
  optimizer        overrides of the experiment's AdamW fields for this phase (b1, b2, eps,
                   weight_decay, max_grad_norm), also written into a carried optimizer state (its
                   hyperparameters live there). E.g. {"b2": 0.999}: RL gradients are small and
                   noisy, and with β2 = 0.95 the second moment forgets the pre-RL scale within
                   ~50 updates, after which every noisy update moves every weight by ~lr
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ling_jax.rl import objectives
from ling_jax.rl.rewards import REWARDS
from ling_jax.rl.segmentation import DEFAULT_PAUSE_CHARS
from ling_jax.rl.tasks import TASKS, get_task

RL_DEFAULTS: dict[str, Any] = dict(
    objective="lpo", clip_eps=None, clip_eps_high=None, group_size=8, minibatches=2, epochs=1,
    temperature=1.0, top_p=1.0, top_k=0, max_prompt_tokens=64, kl_beta=0.0, advantage_eps=1e-6,
    reward_weights={"math_answer": 1.0, "format": 1.0, "length": 1.0},
    reward_params={"math_answer": {"extractors": ("hashes",)}},
    pause_chars=DEFAULT_PAUSE_CHARS,
    stages=({"steps": 0, "difficulty": (1,), "max_response_tokens": 32, "length_alpha": 0.1},),
    eval_every=10, eval_problems=64, eval_difficulty=None, reset_optimizer=True, optimizer={},
)
OPTIMIZER_OVERRIDES = ("b1", "b2", "eps", "weight_decay", "max_grad_norm")  # same state layout
STAGE_FIELDS = ("steps", "difficulty", "max_response_tokens", "length_alpha")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One Evo-CoT stage: prompt difficulty, response budget and length-reward alpha."""

    index: int
    start: int  # first phase step (0-based) of the stage
    difficulty: tuple[int, ...]
    max_response_tokens: int
    length_alpha: float


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


CODE_DEFAULTS: dict[str, Any] = dict(  # replaces RL_DEFAULTS' rewards for builtin_code prompts
    reward_weights={"code_syntax": 0.2, "code_function": 1.0, "code_aesthetics": 0.1,
                    "length": 1.0},
    reward_params={})


def _source_kind(phase) -> str | None:
    sources = (_plain(phase.get("data", None)) or {}).get("sources", {})
    sources = list(sources.values()) if isinstance(sources, Mapping) else list(sources)
    return _plain(sources[0]).get("kind") if len(sources) == 1 else None


def rl_settings(phase) -> dict[str, Any]:
    """The phase's `rl` block with defaults filled in (plain Python values); code-task phases
    default to the code rewards (CODE_DEFAULTS)."""
    given = _plain(phase.get("rl", None)) or {}
    defaults = {**RL_DEFAULTS, **(CODE_DEFAULTS if _source_kind(phase) == "builtin_code" else {})}
    return {**defaults, **{k: _plain(v) for k, v in dict(given).items()}}


def _fail(field: str, message: str) -> None:
    raise ValueError(f"{field}: {message}")


def _difficulties(value: Any, field: str, allowed: Sequence[int]) -> tuple[int, ...]:
    levels = (value,) if isinstance(value, int) else tuple(value or ())
    if not levels or any(level not in allowed for level in levels):
        _fail(field, f"{value!r}: give difficulties from {sorted(allowed)}")
    return tuple(int(v) for v in levels)


def parse_stages(stages: Sequence[Mapping], phase_steps: int, response_buffer: int,
                 where: str, levels: Sequence[int] | None = None) -> list[Stage]:
    """Stages with their start steps; every field checked against the phase (and the task's
    difficulty `levels`, arithmetic's by default)."""
    levels = TASKS["builtin_arithmetic"].levels if levels is None else levels
    if not stages:
        _fail(f"{where}.stages", "give at least one stage")
    out, start = [], 0
    for i, stage in enumerate(stages):
        field = f"{where}.stages[{i}]"
        stage = dict(_plain(stage))
        unknown = sorted(set(stage) - set(STAGE_FIELDS))
        if unknown:
            _fail(field, f"unknown field(s) {unknown}; allowed {list(STAGE_FIELDS)}")
        steps = int(stage.get("steps", 0))
        if steps < 0 or (steps == 0 and i < len(stages) - 1):
            _fail(f"{field}.steps", f"{steps}: only the last stage may have 0 (= until the end)")
        tokens = int(stage.get("max_response_tokens", 0))
        if not 0 < tokens <= response_buffer:
            _fail(f"{field}.max_response_tokens", f"{tokens} must be in [1, {response_buffer}] "
                  "(seq_len - max_prompt_tokens); raise the phase's seq_len")
        alpha = float(stage.get("length_alpha", 0.0))
        if alpha < 0:
            _fail(f"{field}.length_alpha", f"{alpha} must be >= 0")
        out.append(Stage(i, start, _difficulties(stage.get("difficulty"), f"{field}.difficulty",
                                                 levels),
                         tokens, alpha))
        start += steps
    if out[-1].start >= phase_steps and len(out) > 1:
        _fail(f"{where}.stages", f"stages start at steps {[s.start for s in out]}, but the phase "
              f"has only {phase_steps} steps: shorten the stages or raise the phase's steps")
    return out


def stage_at(stages: Sequence[Stage], step_in_phase: int) -> Stage:
    """The stage that phase step `step_in_phase` (0-based) belongs to."""
    return [s for s in stages if s.start <= step_in_phase][-1]


def _check_numbers(rl: dict, where: str, batch_size: int) -> None:
    for field in ("group_size", "minibatches", "epochs", "max_prompt_tokens", "eval_every",
                  "eval_problems"):
        if not isinstance(rl[field], int) or rl[field] < 1:
            _fail(f"{where}.{field}", f"must be a positive int, got {rl[field]!r}")
    if rl["group_size"] < 2:
        _fail(f"{where}.group_size", "needs >= 2 samples per prompt for group advantages")
    if batch_size % rl["minibatches"]:
        _fail(f"{where}.minibatches", f"{rl['minibatches']} must divide the phase's batch_size "
              f"{batch_size} (minibatches hold whole groups)")
    if rl["temperature"] <= 0:
        _fail(f"{where}.temperature", f"{rl['temperature']} must be > 0 for RL sampling")
    if not 0 < rl["top_p"] <= 1 or rl["top_k"] < 0:
        _fail(f"{where}.top_p", "top_p must be in (0, 1] and top_k >= 0")
    if rl["kl_beta"] < 0:
        _fail(f"{where}.kl_beta", f"{rl['kl_beta']} must be >= 0")
    unknown = sorted(set(rl["optimizer"] or {}) - set(OPTIMIZER_OVERRIDES))
    if unknown:
        _fail(f"{where}.optimizer", f"unknown field(s) {unknown}; an rl phase may override "
              f"{list(OPTIMIZER_OVERRIDES)} (the optimizer state layout must not change)")


TASK_REWARDS = {"builtin_arithmetic": ("math_answer",),
                "builtin_code": ("code_syntax", "code_function", "code_aesthetics")}


def _check_rewards(rl: dict, where: str, kind: str = "builtin_arithmetic") -> None:
    for field in ("reward_weights", "reward_params"):
        unknown = sorted(set(rl[field] or {}) - set(REWARDS))
        if unknown:
            _fail(f"{where}.{field}", f"unknown reward(s) {unknown}; use {sorted(REWARDS)}")
        foreign = sorted({r for other, names in TASK_REWARDS.items() if other != kind
                          for r in names} & set(rl[field] or {}))
        if foreign:
            _fail(f"{where}.{field}", f"reward(s) {foreign} do not apply to {kind} prompts; use "
                  f"{list(TASK_REWARDS[kind])} (+ format, length)")
    if not rl["reward_weights"]:
        _fail(f"{where}.reward_weights", "give at least one weighted reward")
    if "length" in (rl["reward_params"] or {}) and "alpha" in rl["reward_params"]["length"]:
        _fail(f"{where}.reward_params.length.alpha", "set the length alpha per stage "
              "(stages[i].length_alpha) instead")


def task_source(phase, where: str) -> dict:
    """The single task source (builtin_arithmetic | builtin_code) of an rl phase's data block."""
    sources = _plain(phase.data).get("sources", {})
    sources = list(sources.values()) if isinstance(sources, Mapping) else list(sources)
    if len(sources) != 1 or _plain(sources[0]).get("kind") not in TASKS:
        _fail(f"{where}.data.sources", f"an rl phase takes exactly one source of kind "
              f"{sorted(TASKS)} (its prompts and verifiable answers)")
    src = dict(_plain(sources[0]))
    return {"kind": src["kind"], "split": src.get("split", "train"),
            "seed": int(src.get("seed") or 0), "num_docs": int(src.get("num_docs", 100_000))}


arithmetic_source = task_source  # the name before code tasks existed


def validate_rl_phase(name: str, phase, phase_steps: int) -> list[Stage]:
    """Raise ValueError naming the first bad field of an rl phase; returns its stages."""
    where = f"phases.{name}.rl"
    rl = rl_settings(phase)
    unknown = sorted(set(rl) - set(RL_DEFAULTS))
    if unknown:
        _fail(where, f"unknown field(s) {unknown}; allowed {sorted(RL_DEFAULTS)}")
    if rl["objective"] not in objectives.names():
        _fail(f"{where}.objective", f"{rl['objective']!r} is not one of {objectives.names()}")
    if int(phase.get("microbatches", 1)) != 1:
        _fail(f"phases.{name}.microbatches", "an rl phase splits its batch with "
              "rl.minibatches (optimizer steps over whole groups); leave microbatches at 1")
    _check_numbers(rl, where, int(phase.batch_size))
    kind = task_source(phase, f"phases.{name}")["kind"]
    _check_rewards(rl, where, kind)
    response_buffer = int(phase.seq_len) - rl["max_prompt_tokens"]
    if response_buffer < 1:
        _fail(f"phases.{name}.seq_len", f"{phase.seq_len} leaves no room for responses after "
              f"rl.max_prompt_tokens={rl['max_prompt_tokens']}")
    levels = get_task(kind).levels
    stages = parse_stages(rl["stages"], phase_steps, response_buffer, where, levels)
    if rl["eval_difficulty"] is not None:
        _difficulties(rl["eval_difficulty"], f"{where}.eval_difficulty", levels)
    return stages
