"""Conversation sources and their config: records, validation errors that name the problem."""

import json

import pytest

from ling_jax.data.config import validate_data_config
from ling_jax.data.documents import DocumentEncoder
from ling_jax.data.sources import ChatJsonlSource


def test_chat_jsonl_records(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "yo"}], "tools": [{"name": "f"}]},
            {"conv": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    source = ChatJsonlSource(str(path))
    assert len(source) == 2
    assert source[0] == {"index": 0, **rows[0]}
    with pytest.raises(ValueError, match=r"c.jsonl:3 has no 'messages' list \(found \['conv'\]\)"):
        source[1]
    assert ChatJsonlSource(str(path), messages_key="conv")[1]["messages"] == rows[1]["conv"]


def test_conversations_need_a_template_and_valid_turns(tokenizer):
    record = {"index": 4, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ValueError, match="no chat template; set data.chat_template"):
        DocumentEncoder("c", tokenizer, tokenizer.vocab_size)(record)
    from ling_jax.data.chat_template import chat_template

    encoder = DocumentEncoder("c", tokenizer, tokenizer.vocab_size,
                              chat_template=chat_template("compact"))
    assert encoder(record)["loss_mask"].sum() == 0  # no assistant turn: nothing to train
    bad = {"index": 5, "messages": [{"role": "robot", "content": "x"}]}
    with pytest.raises(ValueError, match="source 'c', document 5: messages\\[0\\]: role must be"):
        encoder(bad)


@pytest.mark.parametrize("source, message", [
    ({"kind": "builtin_tool_calls", "num_tools": 9}, r"num_tools=9 must be in \[1, 5\]"),
    ({"kind": "builtin_tool_calls", "split": "dev"}, r"split='dev'"),
    ({"kind": "chat_jsonl", "path": "/nonexistent/x.jsonl"}, "matches no file"),
    ({"kind": "chat_jsonl"}, r"missing required field\(s\) \['path'\]"),
])
def test_bad_conversation_sources(source, message):
    with pytest.raises(ValueError, match=message):
        validate_data_config({"sources": {"s": source}})


def test_bad_data_chat_template():
    with pytest.raises(ValueError, match="chat_template='chatml' is not a preset"):
        validate_data_config({"sources": {"s": {"kind": "builtin_tool_calls"}},
                              "chat_template": "chatml"})
