"""Held-out accuracy and mean response tokens of greedy responses, with confidence intervals.

Arithmetic: a problem counts as solved when the greedy response's last "#### N" equals the answer
exactly (ling_jax.rl.rewards.is_correct with the `hashes` extractor only: no last-number
fallback). Code: when the program passes all of the task's tests in the sandbox (pass@1).
Accuracy alone hides what a response costs: every evaluation also reports the mean number of
response tokens (stop token included), the x axis of the accuracy-vs-tokens curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import numpy as np

from ling_jax.data.arithmetic import ArithmeticProblem, arithmetic_problems
from ling_jax.rl.rewards import is_correct
from ling_jax.rl.rollout import encode_prompts

Z95 = 1.959963984540054


def heldout_set(n: int, difficulty: int | Sequence[int], seed: int = 0) -> list[ArithmeticProblem]:
    """The first n held-out problems (difficulty levels cycled per problem)."""
    return arithmetic_problems("heldout", n, difficulty=difficulty, seed=seed)


def exact_match(texts: Sequence[str], problems: Sequence[ArithmeticProblem]) -> np.ndarray:
    """[n] bool: the response's final '#### N' equals the problem's answer."""
    return np.asarray([is_correct(t, p.answer, extractors=("hashes",))
                       for t, p in zip(texts, problems, strict=True)], bool)


def greedy_eval(generate_fn, params, biases, tokenizer, problems: Sequence, *,
                max_prompt_tokens: int, max_steps: int, pad_id: int,
                correct_fn: Callable[[list[str], Sequence], np.ndarray] = exact_match,
                ) -> tuple[np.ndarray, np.ndarray]:
    """([n] bool correct, [n] int response tokens) with a greedy `generate_fn`
    (decode.make_generate_fn, temperature 0); correct_fn(texts, problems) judges the texts."""
    ids, lengths = encode_prompts(tokenizer, [p.prompt for p in problems], max_prompt_tokens,
                                  pad_id)
    out = generate_fn(params, biases, ids, lengths, jax.random.key(0), max_steps)
    tokens, counts = jax.device_get((out.tokens, out.lengths))
    texts = [tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, counts, strict=True)]
    return np.asarray(correct_fn(texts, problems), bool), np.asarray(counts, np.int64)


def greedy_correct(generate_fn, params, biases, tokenizer, problems: Sequence[ArithmeticProblem],
                   *, max_prompt_tokens: int, max_steps: int, pad_id: int) -> np.ndarray:
    """[n] bool per problem (greedy_eval's exact match only)."""
    return greedy_eval(generate_fn, params, biases, tokenizer, problems,
                       max_prompt_tokens=max_prompt_tokens, max_steps=max_steps, pad_id=pad_id)[0]


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(before: Sequence[float], after: Sequence[float],
                      z: float = Z95) -> tuple[float, float, float]:
    """(after − before mean, low, high): normal interval of a paired difference on the same
    problems (the per-problem differences' mean ± z·sd/√n); correctness flags or token counts."""
    d = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    if d.size == 0:
        raise ValueError("paired_difference needs at least one problem")
    half = z * (d.std(ddof=1) / math.sqrt(d.size) if d.size > 1 else 0.0)
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def describe(correct: Sequence[bool]) -> str:
    """'0.412 (95% CI 0.35-0.48, n=256)'."""
    k, n = int(np.sum(correct)), len(correct)
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={n})"


def heldout_change(before: Sequence[bool], after: Sequence[bool]) -> dict[str, float]:
    """Before/after accuracy on the same problems with the paired 95% CI of the change (metrics)."""
    if len(before) != len(after):
        raise ValueError(f"before and after must score the same problems, got {len(before)} "
                         f"and {len(after)}")
    diff, lo, hi = paired_difference(before, after)
    return {"heldout_before": float(np.mean(before)), "heldout_after": float(np.mean(after)),
            "heldout_delta": diff, "heldout_delta_low": lo, "heldout_delta_high": hi,
            "heldout_n": float(len(before))}


def difference_text(change: dict[str, float]) -> str:
    """'paired difference +0.057 (95% CI +0.036 to +0.077)' from `heldout_change` fields."""
    return (f"paired difference {change['heldout_delta']:+.3f} (95% CI "
            f"{change['heldout_delta_low']:+.3f} to {change['heldout_delta_high']:+.3f})")


def describe_change(before: Sequence[bool], after: Sequence[bool], metric: str = "exact match",
                    tokens: tuple[float, float] | None = None) -> str:
    """One line: before and after with Wilson CIs, the paired difference with its CI, and (given
    `tokens` = mean response tokens before and after) the cost per response."""
    line = (f"held-out {metric} {describe(before)} -> {describe(after)}; "
            f"{difference_text(heldout_change(before, after))}")
    if tokens is not None:
        line += f"; mean response tokens {tokens[0]:.1f} -> {tokens[1]:.1f}"
    return line


def phase_tokens(rows: list[dict]) -> tuple[float, float] | None:
    """(mean held-out response tokens at the phase start, at its end), None when not logged."""
    before = next((r["heldout_tokens"] for r in rows
                   if r.get("heldout_rl_steps") == 0 and "heldout_tokens" in r), None)
    after = next((r["heldout_tokens_end"] for r in rows if "heldout_tokens_end" in r), None)
    return None if before is None or after is None else (float(before), float(after))


def accuracy_token_curve(rows: list[dict]) -> list[tuple[int, float, float]]:
    """(RL steps done, mean response tokens, accuracy) of every held-out evaluation of a phase."""
    points = [(int(r["heldout_rl_steps"]), float(r["heldout_tokens"]),
               float(r["heldout_accuracy"])) for r in rows if "heldout_tokens" in r]
    points += [(int(r["phase_step"]), float(r["heldout_tokens_end"]),
                float(r["heldout_accuracy_end"])) for r in rows if "heldout_tokens_end" in r]
    return points


def phase_response_tokens(rows: list[dict]) -> tuple[list, list] | None:
    """(greedy response tokens per held-out problem at the phase start, at its end), or None."""
    before = next((r["heldout_response_tokens"] for r in rows
                   if r.get("heldout_rl_steps") == 0 and "heldout_response_tokens" in r), None)
    after = next((r["heldout_response_tokens_end"] for r in rows
                  if "heldout_response_tokens_end" in r), None)
    return (before, after) if before and after else None


def phase_heldout(rows: list[dict]) -> tuple[list, list] | None:
    """(correct at the phase start, correct at its end) from one rl phase's metrics records, or
    None until the phase has finished."""
    before = next((r["heldout_correct"] for r in rows if r.get("heldout_rl_steps") == 0), None)
    after = next((r["heldout_correct_end"] for r in rows if "heldout_correct_end" in r), None)
    return (before, after) if before and after else None
