"""Held-out tool-call accuracy of a policy: greedy responses to built-in requests, scored by
sft/tool_eval.py, reported with Wilson 95% CIs and the paired before/after difference."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from ling_jax.data.chat_encoding import cut_at_end_of_turn, encode_prompt
from ling_jax.data.chat_template import ChatTemplate
from ling_jax.data.tool_calls import ToolCallExample
from ling_jax.model.decode import left_pad
from ling_jax.rl.evaluation import paired_difference, wilson_interval
from ling_jax.sft.tool_eval import reason_counts, score_tool_call


def encode_examples(tokenizer, template: ChatTemplate, examples: Sequence[ToolCallExample],
                    pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts [n, P] (P = the longest) and lengths [n]."""
    prompts = [encode_prompt(tokenizer, template, ex.prompt_messages, ex.tools)
               for ex in examples]
    return left_pad(prompts, pad_id=pad_id)


def score_texts(texts: Sequence[str], examples: Sequence[ToolCallExample],
                template: ChatTemplate) -> list[str]:
    """The outcome of each response (tool_eval.REASONS)."""
    return [score_tool_call(cut_at_end_of_turn(t, template), ex.name, ex.arguments, ex.schema,
                            template) for t, ex in zip(texts, examples, strict=True)]


def greedy_outcomes(generate_fn, params, biases, tokenizer, prompt_ids, prompt_lengths,
                    examples: Sequence[ToolCallExample], template: ChatTemplate,
                    max_steps: int) -> tuple[list[str], list[str]]:
    """(outcomes, responses) of a greedy `generate_fn` (decode.make_generate_fn)."""
    out = generate_fn(params, biases, prompt_ids, prompt_lengths, jax.random.key(0), max_steps)
    tokens, counts = jax.device_get((out.tokens, out.lengths))
    texts = [tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, counts, strict=True)]
    return score_texts(texts, examples, template), texts


def accuracy_metrics(outcomes: Sequence[str], suffix: str = "") -> dict:
    """tool_call_accuracy{suffix} with its Wilson 95% CI, per-example results and outcomes."""
    correct = [o == "ok" for o in outcomes]
    low, high = wilson_interval(sum(correct), len(correct))
    return {f"tool_call_accuracy{suffix}": float(np.mean(correct)),
            f"tool_call_ci_low{suffix}": low, f"tool_call_ci_high{suffix}": high,
            f"tool_call_correct{suffix}": [int(c) for c in correct],
            **{f"tool_call_{r}{suffix}": n for r, n in reason_counts(outcomes).items()}}


def tool_call_change(before: Sequence[int], after: Sequence[int]) -> dict[str, float]:
    """Before/after accuracy on the same examples and the paired 95% CI of the change."""
    diff, low, high = paired_difference(before, after)
    return {"tool_call_before": float(np.mean(before)), "tool_call_after": float(np.mean(after)),
            "tool_call_delta": diff, "tool_call_delta_low": low, "tool_call_delta_high": high,
            "tool_call_n": float(len(before))}


def describe_change(m: dict) -> str:
    """One line from tool_call_change fields plus the Wilson CIs of both ends."""
    n = int(m["tool_call_n"])
    ends = []
    for name in ("before", "after"):
        k = round(m[f"tool_call_{name}"] * n)
        low, high = wilson_interval(k, n)
        ends.append(f"{m[f'tool_call_{name}']:.3f} (95% CI {low:.3f}-{high:.3f})")
    return (f"held-out tool-call accuracy {ends[0]} -> {ends[1]} (n={n}); paired difference "
            f"{m['tool_call_delta']:+.3f} (95% CI {m['tool_call_delta_low']:+.3f} to "
            f"{m['tool_call_delta_high']:+.3f})")
