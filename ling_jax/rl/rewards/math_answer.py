"""Verifiable math reward R_correct [reference §7.2]: 1 when the final answer matches, else 0.

The final answer is taken by the first extractor that finds one, in a configurable order:
`boxed` (last \\boxed{...}), `hashes` (last "#### X"), `answer_is` (last "the answer is X" /
"Answer: X"), `last_number` (the last number anywhere; drop it from the order to disable the
fallback). Numeric references compare exactly as fractions ("0.5" == "1/2", "1,000" == "1000");
other references compare as normalised strings. Only the last `max_chars` characters of a
completion are read, all searches are linear, and nothing is ever evaluated.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Sequence

import numpy as np

from ling_jax.rl.rewards.group import RolloutGroup
from ling_jax.rl.rewards.numbers import (
    MAX_ANSWER_CHARS,
    NUMBER_RE,
    answer_value,
    normalise_answer,
    parse_number,
    token_to_fraction,
)

DEFAULT_MAX_CHARS = 16384
DEFAULT_EXTRACTORS = ("boxed", "hashes", "answer_is", "last_number")
LAST_NUMBER_LOOKBACK = 64
_ANSWER_IS_RE = re.compile(r"answer\s{0,8}(?:is\b|:|=)", re.IGNORECASE)
_SEGMENT_STRIP = " \t*:`"


def _line_after(text: str, start: int) -> str | None:
    """The rest of the line from `start` (at most MAX_ANSWER_CHARS), None if blank."""
    end = text.find("\n", start, start + MAX_ANSWER_CHARS)
    segment = text[start : end if end >= 0 else start + MAX_ANSWER_CHARS].strip(_SEGMENT_STRIP)
    return segment or None


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with balanced braces, None if unbalanced within the cap."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, min(len(text), begin + MAX_ANSWER_CHARS)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return text[begin:i].strip() or None
            depth -= 1
    return None


def extract_hashes(text: str) -> str | None:
    """What follows the last '####' on its line (GSM8K style)."""
    start = text.rfind("####")
    return None if start < 0 else _line_after(text, start + 4)


def extract_answer_is(text: str) -> str | None:
    """What follows the last 'answer is' / 'answer:' / 'answer =' on its line."""
    last = None
    for last in _ANSWER_IS_RE.finditer(text):  # noqa: B007 - we want the final match
        pass
    return None if last is None else _line_after(text, last.end())


def extract_last_number(text: str) -> str | None:
    """The last number of the text ('1,2,3' ends in 3); too long or malformed ones are skipped,
    looking back over at most LAST_NUMBER_LOOKBACK number tokens to bound the work."""
    tokens = collections.deque((m.group() for m in NUMBER_RE.finditer(text)), LAST_NUMBER_LOOKBACK)
    for token in reversed(tokens):
        if token_to_fraction(token) is None:
            token = token.rstrip(",").rpartition(",")[2]  # a comma list: take its last item
        if token and token_to_fraction(token) is not None:
            return token
    return None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": extract_boxed,
    "hashes": extract_hashes,
    "answer_is": extract_answer_is,
    "last_number": extract_last_number,
}


def _check_extractors(extractors: Sequence[str]) -> None:
    unknown = [name for name in extractors if name not in EXTRACTORS]
    if unknown or isinstance(extractors, str):
        raise ValueError(
            f"extractors must be a sequence of names from {sorted(EXTRACTORS)}, got {extractors!r}"
        )


def extract_answer(
    completion: str,
    *,
    extractors: Sequence[str] = DEFAULT_EXTRACTORS,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> str | None:
    """The final-answer segment of a completion by the first extractor that finds one."""
    _check_extractors(extractors)
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a str, got {type(completion).__name__}")
    text = completion
    if len(text) > max_chars:
        # Read the tail only; drop a number cut in half at the cut.
        text = text[-max_chars:].lstrip("0123456789.,")
    for name in extractors:
        segment = EXTRACTORS[name](text)
        if segment is not None:
            return segment
    return None


def is_correct(completion: str, reference: str, **extract_kwargs) -> bool:
    """Whether the completion's final answer equals the reference (exactly, as numbers)."""
    segment = extract_answer(completion, **extract_kwargs)
    if segment is None:
        return False
    target = parse_number(reference)
    if target is not None:
        return answer_value(segment) == target
    if len(segment) > MAX_ANSWER_CHARS or len(reference) > MAX_ANSWER_CHARS:
        return False
    # Non-numeric answers: equal up to LaTeX noise and whitespace ("x^2+1" == "x^2 + 1").
    squash = lambda text: normalise_answer(text).replace(" ", "")
    return squash(segment) == squash(reference)


def math_answer_reward(
    group: RolloutGroup,
    *,
    extractors: Sequence[str] = DEFAULT_EXTRACTORS,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> np.ndarray:
    """1.0 for each completion whose final answer matches group.reference, else 0.0 ([G])."""
    if group.reference is None:
        raise ValueError("RolloutGroup.reference is required by the math_answer reward")
    kwargs = {"extractors": extractors, "max_chars": max_chars}
    return np.array(
        [float(is_correct(c, group.reference, **kwargs)) for c in group.completions],
        dtype=np.float64,
    )
