"""BFCL-style tool-call scoring on hand-made responses, and the accuracy / change metrics."""

import json

import pytest

from ling_jax.data.chat_template import chat_template
from ling_jax.sft.evaluation import accuracy_metrics, describe_change, tool_call_change
from ling_jax.sft.tool_eval import parse_tool_calls, score_tool_call, type_matches

T = chat_template("compact")
SCHEMA = {"name": "book", "parameters": {"city": "string", "people": "integer",
                                         "budget": "number", "vip": "boolean",
                                         "unit": ["eur", "usd"]}}
ARGS = {"city": "New York", "people": 4, "budget": 12.5, "vip": False, "unit": "eur"}


def _call(name="book", **changes):
    return "<call>" + json.dumps({"name": name, "arguments": {**ARGS, **changes}}) + "</call>"


@pytest.mark.parametrize("text, outcome", [
    (_call(), "ok"),
    ("Sure. " + _call(), "ok"),                                  # text around the call is fine
    (_call(city="new york"), "ok"),                              # strings: case-folded
    (_call(city="NewYork"), "ok"),                               # ... and spaces removed
    (_call(budget=12.50000000001), "ok"),                        # numbers: 1e-9 relative
    (_call(people=4.0), "wrong_type"),                           # an integer must be an int
    (_call(people="4"), "wrong_type"),
    (_call(vip=0), "wrong_type"),                                # booleans are true/false only
    (_call(budget=12), "wrong_value"),                           # int is a number, but 12 != 12.5
    (_call(unit="EUR"), "wrong_type"),                           # enums match exactly
    (_call(city="Boston"), "wrong_value"),
    (_call(people=5), "wrong_value"),
    (_call(vip=True), "wrong_value"),
    (_call(name="book_table"), "wrong_function"),
    ('<call>{"name": "book", "arguments": {"city": "New York"}}</call>', "wrong_arguments"),
    (_call(extra=1), "wrong_arguments"),
    (_call() + _call(), "several_calls"),
    ("I cannot help.", "no_call"),
    ('<call>{"name": "book", "arguments": {"city": </call>', "malformed"),
    ('<call>{"name": "book", "args": {}}</call>', "malformed"),
    ('<call>["book"]</call>', "malformed"),
])
def test_score_tool_call(text, outcome):
    assert score_tool_call(text, "book", ARGS, SCHEMA, T) == outcome


def test_parse_uses_the_templates_markers():
    ling = chat_template("ling")
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text, ling) == [{"name": "f", "arguments": {}}]
    assert parse_tool_calls(text, T) == []
    with pytest.raises(ValueError, match="unknown parameter type"):
        type_matches(1, "int")


def test_accuracy_and_change_metrics():
    m = accuracy_metrics(["ok", "ok", "no_call", "wrong_value"], "_end")
    assert m["tool_call_accuracy_end"] == 0.5 and m["tool_call_correct_end"] == [1, 1, 0, 0]
    assert m["tool_call_ok_end"] == 2 and m["tool_call_no_call_end"] == 1
    assert 0.15 < m["tool_call_ci_low_end"] < 0.5 < m["tool_call_ci_high_end"] < 0.85
    change = tool_call_change([0, 0, 0, 0, 1], [1, 1, 1, 0, 1])
    assert change["tool_call_delta"] == pytest.approx(0.6)
    assert change["tool_call_delta_low"] < 0.6 < change["tool_call_delta_high"]
    line = describe_change(change)
    assert "0.200" in line and "0.800" in line and "+0.600" in line and "n=5" in line
