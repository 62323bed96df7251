"""Tool-call scoring in the spirit of BFCL's AST check: the response must hold exactly one call,
to the expected function, with exactly the expected arguments, each of the schema's type and equal
to the expected value.

Types (a schema's "parameters": {arg: type}): "string" (compared after BFCL-style normalisation:
case-folded, spaces and ,./-_*^ removed), "integer" (an int, not a bool or float), "number" (an int
or float, equal within 1e-9 relative), "boolean" (true/false only), a list of strings (an enum:
one of them, exactly).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ling_jax.data.chat_template import ChatTemplate

_STRING_NOISE = re.compile(r"[\s,./\-_*^]")
REASONS = ("ok", "no_call", "malformed", "several_calls", "wrong_function", "wrong_arguments",
           "wrong_type", "wrong_value")


def parse_tool_calls(text: str, template: ChatTemplate) -> list[dict[str, Any]] | None:
    """The calls between the template's tool-call markers; None if one is not valid JSON of the
    form {"name": str, "arguments": {...}}."""
    start, end = re.escape(template.tool_call_start), re.escape(template.tool_call_end)
    calls = []
    for body in re.findall(f"{start}(.*?){end}", text, flags=re.DOTALL):
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            return None
        if (not isinstance(call, dict) or not isinstance(call.get("name"), str)
                or not isinstance(call.get("arguments"), dict)):
            return None
        calls.append(call)
    if text.count(template.tool_call_start) != len(calls):  # a call opened and never closed
        return None
    return calls


def type_matches(value: Any, kind: Any) -> bool:
    """`value` is of the schema type `kind`."""
    if isinstance(kind, list):
        return isinstance(value, str) and value in kind
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    raise ValueError(f"unknown parameter type {kind!r}; use string, integer, number, boolean "
                     "or a list of allowed strings")


def value_matches(value: Any, expected: Any, kind: Any) -> bool:
    """Equal as the type compares (see the module docstring); the type is checked first."""
    if kind == "string":
        return _STRING_NOISE.sub("", value).casefold() == _STRING_NOISE.sub("", expected).casefold()
    if kind == "number":
        return math.isclose(float(value), float(expected), rel_tol=1e-9, abs_tol=0.0)
    return value == expected


def score_tool_call(text: str, name: str, arguments: Mapping[str, Any],
                    schema: Mapping[str, Any], template: ChatTemplate) -> str:
    """The outcome of one response: "ok" or the first failure in REASONS."""
    calls = parse_tool_calls(text, template)
    if calls is None:
        return "malformed"
    if not calls:
        return "no_call"
    if len(calls) > 1:
        return "several_calls"
    call = calls[0]
    if call["name"] != name:
        return "wrong_function"
    if set(call["arguments"]) != set(arguments):
        return "wrong_arguments"
    types = schema["parameters"]
    for arg in arguments:
        if not type_matches(call["arguments"][arg], types[arg]):
            return "wrong_type"
    for arg, expected in arguments.items():
        if not value_matches(call["arguments"][arg], expected, types[arg]):
            return "wrong_value"
    return "ok"


def reason_counts(reasons: Sequence[str]) -> dict[str, int]:
    """How many responses ended with each outcome (every outcome listed)."""
    return {r: sum(1 for x in reasons if x == r) for r in REASONS}
