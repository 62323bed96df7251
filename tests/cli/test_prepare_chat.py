"""`ling-jax prepare-chat`: conversation JSONL → ArrayRecord token records (assistant-only masks)
that an array_record source reads back exactly as the chat pipeline would encode them."""

import json
import random

import numpy as np
import pytest

from ling_jax.data.builtin import builtin_tokenizer
from ling_jax.data.chat_encoding import encode_conversation, prepare, read_template
from ling_jax.data.sources import ArrayRecordSource
from tests.data.test_chat_template import random_conversation


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return builtin_tokenizer(1024, tmp_path_factory.mktemp("tok"), max_bytes=1_000_000)


def test_prepare_writes_what_the_pipeline_encodes(tokenizer, tmp_path):
    convs = [random_conversation(random.Random(i)) for i in range(6)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs[:4]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs[4:]))
    template = read_template("compact")
    out = tmp_path / "chats.arrayrecord"
    assert prepare([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], tokenizer, template,
                   out) == 6
    source = ArrayRecordSource(str(out))
    for i, conv in enumerate(convs):
        ids, trained = encode_conversation(tokenizer, template, conv)
        np.testing.assert_array_equal(source[i]["tokens"], ids)
        np.testing.assert_array_equal(source[i]["target_mask"], trained)


def test_bad_input_leaves_nothing(tokenizer, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    out = tmp_path / "o.arrayrecord"
    with pytest.raises(ValueError, match="conversation 0: messages\\[0\\]: role must be"):
        prepare([str(tmp_path / "bad.jsonl")], tokenizer, read_template("ling"), out)
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.jsonl"]
    with pytest.raises(FileNotFoundError, match="--chat_template: file x.json not found"):
        read_template("x.json")
