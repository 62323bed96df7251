"""Conversations through tfds (array_record, tfds.data_source): records as written, the same
batches as the same conversations in a chat_jsonl file, errors that name the problem."""

import json

import numpy as np
import pytest

from ling_jax.data.chat_tfds import TfdsChatSource, conversation_example, write_tfds_conversations
from ling_jax.data.config import validate_data_config
from ling_jax.data.pipeline import make_pipeline
from ling_jax.data.tool_calls import ToolCallSource

NAME = "ling_jax_tiny_chat"


def _conversations(n, split="train"):
    source = ToolCallSource(split, num_docs=n, num_tools=2)
    rows = [source[i] for i in range(n)]
    rows[1] = {"messages": [{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello"}]}  # no tools
    return [{k: v for k, v in r.items() if k != "index"} for r in rows]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("chat_tfds")
    splits = {"train": iter(_conversations(6)), "test": iter(_conversations(2, "heldout"))}
    write_tfds_conversations(NAME, splits, data_dir)
    return str(data_dir)


def test_records_read_back_as_written(chat_dir):
    want = _conversations(6)
    source = TfdsChatSource(NAME, data_dir=chat_dir)
    assert len(source) == 6
    assert [source[i] for i in range(6)] == [{"index": i, **r} for i, r in enumerate(want)]
    assert "tools" not in source[1]
    assert len(TfdsChatSource(NAME, split="test", data_dir=chat_dir)) == 2


def test_batches_equal_chat_jsonl_batches(chat_dir, tmp_path, tokenizer):
    """The same conversations from tfds and from a chat_jsonl file pack into the same rows."""
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _conversations(6)))
    batches = []
    for source in ({"kind": "chat_tfds", "name": NAME, "data_dir": chat_dir},
                   {"kind": "chat_jsonl", "path": str(path)}):
        data = {"sources": {"chat": source}, "chat_template": "compact"}
        it = make_pipeline(data, seq_len=256, batch_size=2, tokenizer=tokenizer, seed=3)
        batches.append([next(it) for _ in range(3)])
    for a, b in zip(*batches, strict=True):
        assert a["loss_mask"].sum() > 0
        for key in ("inputs", "targets", "loss_mask", "segment_ids", "positions"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_example_layout_and_errors(chat_dir):
    record = {"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]}
    assert conversation_example(record) == {"messages": json.dumps(record["messages"]),
                                            "tools": json.dumps(record["tools"])}
    with pytest.raises(ValueError, match="conversation: 'messages' must be a non-empty list"):
        conversation_example({"messages": []})
    with pytest.raises(ValueError, match=r"has no feature 'conv'; features are \['messages', "
                                         r"'tools'\]; set messages_key"):
        TfdsChatSource(NAME, data_dir=chat_dir, messages_key="conv")[0]
    with pytest.raises(ValueError, match="cannot open tfds dataset 'no_such_chat'"):
        TfdsChatSource("no_such_chat", data_dir=chat_dir)


@pytest.mark.parametrize("source, message", [
    ({"kind": "chat_tfds"}, r"missing required field\(s\) \['name'\]"),
    ({"kind": "chat_tfds", "name": "d", "data_dir": "/nonexistent"}, r"s.data_dir="),
])
def test_bad_chat_tfds_sources(source, message):
    with pytest.raises(ValueError, match=message):
        validate_data_config({"sources": {"s": source}})
