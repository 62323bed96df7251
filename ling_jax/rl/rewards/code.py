"""The hybrid code reward: syntax, function and aesthetics, each a reward of its own (so each is
weighted and logged separately, as `reward_code_syntax`, `reward_code_function`,
`reward_code_aesthetics`).

The program of a completion is `task.prompt + completion` (the prompt holds the signature and the
docstring, ling_jax.data.code_tasks). code_syntax: 1 when it parses with `ast` (nothing runs).
code_function: the fraction of the task's tests passed (or 1 only when all pass, with
partial_credit=False), run in the sandbox (ling_jax.rl.rewards.sandbox), never in this process;
programs that do not parse are not run. code_aesthetics: the style score of aesthetics.py.
`execute_groups` runs all groups of a step through one bounded pool at once and records, per
completion, the sandbox result and `correct` (all tests pass, used by the length reward).
"""

from __future__ import annotations

import ast
import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from ling_jax.rl.rewards.aesthetics import aesthetics_score
from ling_jax.rl.rewards.group import RolloutGroup
from ling_jax.rl.rewards.sandbox import (
    MAX_PROGRAM_CHARS,
    SandboxJob,
    SandboxLimits,
    SandboxResult,
    run_jobs,
)

LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(SandboxLimits))
CACHE_SIZE = 16384  # sandbox results kept per process (a step's accuracy re-reads its rewards')
_cache: collections.OrderedDict = collections.OrderedDict()


def _run_cached(jobs: list[SandboxJob], limits: SandboxLimits, workers: int | None,
                isolation: str | None) -> list[SandboxResult]:
    """run_jobs, reusing earlier results of the same job under the same limits (not timeouts,
    which depend on the machine's load)."""
    keys = [(job.key, limits, isolation) for job in jobs]
    missing = {k: job for k, job in zip(keys, jobs, strict=True) if k not in _cache}
    fresh = {}
    for key, result in zip(missing, run_jobs(list(missing.values()), limits, workers, isolation),
                           strict=True):
        fresh[key] = result
        if result.status != "timeout":
            _cache[key] = result
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return [fresh[k] if k in fresh else _cache[k] for k in keys]


def program_of(task, completion: str) -> str:
    """The program a completion makes: the task's prompt (signature + docstring) + completion."""
    return task.prompt + completion


def parses(program: str) -> bool:
    """Whether `program` is valid Python (ast.parse only; nothing is compiled or run)."""
    if len(program) > MAX_PROGRAM_CHARS:
        return False
    try:
        ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _need_task(group: RolloutGroup, reward: str):
    if group.task is None:
        raise ValueError(f"the {reward} reward needs RolloutGroup.task (a code task with prompt, "
                         "entry_point, args, expected)")
    return group.task


def _not_run(n_tests: int) -> SandboxResult:
    return SandboxResult((False,) * n_tests, "syntax_error", "not run", 0.0, 0)


def execute_groups(groups: Sequence[RolloutGroup], *, workers: int | None = None,
                   isolation: str | None = None, **limits) -> list[RolloutGroup]:
    """Groups with `executions` (one SandboxResult per completion) and `correct` filled in.

    limits: SandboxLimits fields (cpu_seconds, wall_seconds, memory_bytes, file_bytes, processes).
    Groups that already have executions are left as they are.
    """
    unknown = sorted(set(limits) - set(LIMIT_FIELDS))
    if unknown:
        raise ValueError(f"code_function params: unknown field(s) {unknown}; sandbox limits are "
                         f"{list(LIMIT_FIELDS)}, plus workers and isolation")
    todo = [(gi, ci) for gi, g in enumerate(groups) if g.executions is None
            for ci in range(len(g.completions))]
    jobs, runnable = [], []
    for gi, ci in todo:
        task = _need_task(groups[gi], "code_function")
        program = program_of(task, groups[gi].completions[ci])
        if parses(program):
            runnable.append((gi, ci))
            jobs.append(SandboxJob(program, task.entry_point, tuple(task.args),
                                   tuple(task.expected)))
    results = dict(zip(runnable, _run_cached(jobs, SandboxLimits(**limits), workers, isolation),
                       strict=True))
    out = list(groups)
    for gi, g in enumerate(groups):
        if g.executions is not None:
            continue
        n = len(g.task.expected)
        execs = tuple(results.get((gi, ci), _not_run(n)) for ci in range(len(g.completions)))
        out[gi] = dataclasses.replace(g, executions=execs,
                                      correct=tuple(e.all_passed for e in execs))
    return out


def code_syntax_reward(group: RolloutGroup) -> np.ndarray:
    """1.0 for each completion whose program parses, else 0.0 ([G])."""
    task = _need_task(group, "code_syntax")
    return np.array([float(parses(program_of(task, c))) for c in group.completions], np.float64)


def code_function_reward(group: RolloutGroup, *, partial_credit: bool = True,
                         **sandbox) -> np.ndarray:
    """Fraction of tests passed (partial_credit) or 1.0 only when all pass ([G]).

    Runs the sandbox when the group has no executions yet (sandbox: execute_groups' keywords).
    """
    if group.executions is None:
        group = execute_groups([group], **sandbox)[0]
    if partial_credit:
        return np.array([e.fraction for e in group.executions], np.float64)
    return np.array([float(e.all_passed) for e in group.executions], np.float64)


def code_aesthetics_reward(group: RolloutGroup) -> np.ndarray:
    """The aesthetics score of each completion's program ([G]; 0 when it does not parse)."""
    task = _need_task(group, "code_aesthetics")
    return np.array([aesthetics_score(program_of(task, c)) if parses(program_of(task, c))
                     else 0.0 for c in group.completions], np.float64)
