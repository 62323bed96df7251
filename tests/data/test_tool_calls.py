"""The built-in tool-call task: deterministic, disjoint splits, consistent schemas and requests."""

import pytest

from ling_jax.data.tool_calls import (
    FUNCTIONS,
    ToolCallSource,
    split_of,
    tool_call_example,
    tool_call_examples,
)
from ling_jax.sft.tool_eval import type_matches


def test_examples_are_deterministic_and_splits_disjoint():
    train = tool_call_examples("train", 300, seed=1)
    assert train == tool_call_examples("train", 300, seed=1)
    heldout = tool_call_examples("heldout", 100, seed=1)
    assert {e.request for e in train}.isdisjoint(e.request for e in heldout)
    assert all(split_of(e.request) == "heldout" for e in heldout)
    assert len({e.name for e in heldout}) == len(FUNCTIONS)  # every function is asked for


@pytest.mark.parametrize("num_tools", [1, 3, 5])
def test_offered_tools_hold_the_answer_and_typed_arguments(num_tools):
    for i in range(50):
        ex = tool_call_example(i, num_tools=num_tools)
        names = [t["name"] for t in ex.tools]
        assert len(set(names)) == num_tools and ex.name in names
        types = ex.schema["parameters"]
        assert set(ex.arguments) == set(types)
        assert all(type_matches(v, types[k]) for k, v in ex.arguments.items())
        # Every argument value appears in the request (the task is solvable from it).
        for k, v in ex.arguments.items():
            if not isinstance(v, bool):
                assert str(v) in ex.request, (ex.request, k, v)


def test_source_records_and_errors():
    record = ToolCallSource(num_docs=3, seed=2)[1]
    ex = tool_call_example(1, seed=2)
    assert record == {"index": 1, "messages": ex.messages, "tools": ex.tools}
    assert [m["role"] for m in ex.messages] == ["user", "assistant", "tool", "assistant"]
    with pytest.raises(ValueError, match="split 'dev' is unknown"):
        tool_call_example(0, split="dev")
    with pytest.raises(ValueError, match="num_tools=9"):
        ToolCallSource(num_tools=9)
