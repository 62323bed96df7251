"""Chat templates: the Python renderer and its Jinja twin agree (HF's renderer), presets and
overrides, segment encoding, and the loss mask covering exactly the assistant turns."""

import json
import os
import random

import numpy as np
import pytest

from ling_jax.data.chat_encoding import (
    encode_conversation,
    encode_prompt,
    encode_segments,
    stop_ids,
    write_chat_records,
)
from ling_jax.data.chat_template import (
    PRESETS,
    chat_template,
    jinja_chat_template,
    jinja_template,
    render_segments,
    render_text,
)
from ling_jax.data.documents import DocumentEncoder
from ling_jax.data.sources import ArrayRecordSource
from ling_jax.data.tool_calls import tool_call_example

_WORDS = ("alpha", "Beta", "7", "x=3", "ünï", "<b>", "two words", "new\nline", '"q"', "{}")


def _hf_renderer(template: str):
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("transformers is needed to render the Jinja chat template")
        pytest.skip("transformers is not installed")
    return _compile_jinja_template(template)


def _text(rng):
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))


def random_conversation(rng: random.Random) -> dict:
    """A random multi-turn conversation with system/user/assistant/tool turns and tool calls."""
    messages = [{"role": "system", "content": _text(rng)}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": _text(rng)})
        if rng.random() < 0.5:
            call = {"name": rng.choice(("f", "get_x")),
                    "arguments": {"a": rng.randint(0, 99), "b": _text(rng), "c": rng.random() < .5}}
            if rng.random() < 0.5:
                call = {"type": "function", "function": call}
            messages.append({"role": "assistant", "content": rng.choice(("", _text(rng))),
                             "tool_calls": [call]})
            messages.append({"role": "tool", "content": json.dumps({"r": _text(rng)})})
        messages.append({"role": "assistant", "content": _text(rng)})
    tools = ([{"name": "f", "parameters": {"a": "integer", "b": ["x", "y"]}}]
             if rng.random() < 0.6 else None)
    return {"messages": messages, "tools": tools}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_jinja_twin_renders_like_python_on_random_conversations(preset):
    template = chat_template(preset)
    render = _hf_renderer(jinja_template(template))
    rng = random.Random(preset)
    for _ in range(60):
        conv = random_conversation(rng)
        for generation in (False, True):
            want = render.render(messages=conv["messages"], tools=conv["tools"],
                                 add_generation_prompt=generation)
            assert render_text(template, conv["messages"], conv["tools"],
                               add_generation_prompt=generation) == want


def test_render_round_trips_a_hand_written_conversation():
    t = chat_template("compact")
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Timer 5"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"name": "set_timer", "arguments": {"minutes": 5}}]},
                {"role": "tool", "content": "ok"},
                {"role": "assistant", "content": "Done."}]
    tools = [{"name": "set_timer", "parameters": {"minutes": "integer"}}]
    assert render_text(t, messages, tools) == (
        'System: Be brief.\nTools:\n{"name": "set_timer", "parameters": {"minutes": "integer"}}'
        "<|endoftext|>\nUser: Timer 5<|endoftext|>\nAssistant:\n"
        '<call>{"name": "set_timer", "arguments": {"minutes": 5}}</call><|endoftext|>\n'
        "Tool: ok<|endoftext|>\nAssistant:\nDone.<|endoftext|>\n")
    trained = [s for s, on in render_segments(t, messages, tools) if on]
    assert trained == ['<call>{"name": "set_timer", "arguments": {"minutes": 5}}</call>'
                       "<|endoftext|>\n", "Done.<|endoftext|>\n"]


def test_template_specs_and_errors():
    assert chat_template(None) == PRESETS["ling"] == chat_template("ling")
    custom = chat_template({"preset": "compact", "user_start": "Q: "})
    assert custom.user_start == "Q: " and custom.assistant_start == PRESETS["compact"].assistant_start
    assert "Q: " in jinja_chat_template({"chat_template": {"preset": "compact", "user_start": "Q: "}})
    with pytest.raises(ValueError, match="not a preset"):
        chat_template("chatml")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['user'\]"):
        chat_template({"user": "U"})
    with pytest.raises(ValueError, match="must be a string"):
        chat_template({"user_start": 3})
    t = PRESETS["ling"]
    with pytest.raises(ValueError, match="role must be one of"):
        render_segments(t, [{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="may only come first"):
        render_segments(t, [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}])
    with pytest.raises(ValueError, match="arguments must be a JSON object"):
        render_segments(t, [{"role": "assistant", "tool_calls": [{"name": "f",
                                                                  "arguments": "{}"}]}])


def test_segment_encoding_equals_whole_text_encoding_for_compact(tokenizer):
    """The compact preset's trained/untrained boundaries fall at pre-tokenizer splits."""
    t = chat_template("compact")
    rng = random.Random(1)
    convs = [random_conversation(rng) for _ in range(40)]
    convs += [{"messages": e.messages, "tools": e.tools}
              for e in map(tool_call_example, range(20))]
    for conv in convs:
        ids, _ = encode_conversation(tokenizer, t, conv)
        assert ids.tolist() == tokenizer.encode(render_text(t, conv["messages"], conv["tools"]))


def _assistant_spans(render, conv) -> list[tuple[int, int]]:
    """Character spans of the assistant turns' trained text, from the Jinja twin alone: turn k
    starts where the generation prompt of messages[:k] ends and ends where messages[:k+1] does."""
    spans = []
    for k, m in enumerate(conv["messages"]):
        if m["role"] == "assistant":
            start = len(render.render(messages=conv["messages"][:k], tools=conv["tools"],
                                      add_generation_prompt=True))
            end = len(render.render(messages=conv["messages"][:k + 1], tools=conv["tools"]))
            spans.append((start, end))
    return spans


def test_loss_mask_covers_exactly_the_assistant_turns(tokenizer):
    """Trained tokens (by the encoder) are exactly the tokens inside assistant spans (by
    character offsets of the whole-text encoding and the Jinja renderer); targets shift by one."""
    t = chat_template("compact")
    render = _hf_renderer(jinja_template(t))
    rng = random.Random(2)
    encoder = DocumentEncoder("chat", tokenizer, tokenizer.vocab_size, chat_template=t)
    for i in range(40):
        conv = random_conversation(rng)
        text = render_text(t, conv["messages"], conv["tools"])
        enc = tokenizer.tok.encode(text, add_special_tokens=False)
        spans = _assistant_spans(render, conv)
        want = np.array([any(a <= s < b for a, b in spans) for s, _ in enc.offsets])
        ids, trained = encode_conversation(tokenizer, t, conv)
        assert ids.tolist() == enc.ids
        np.testing.assert_array_equal(trained, want)
        feats = encoder({"index": i, **conv})
        np.testing.assert_array_equal(feats["loss_mask"][:-1], want[1:].astype(np.float32))
        np.testing.assert_array_equal(feats["targets"][:-1], ids[1:])
        # What is trained decodes to the assistant turns (contents, calls, ends of turn).
        trained_text = "".join(text[a:b] for a, b in spans)
        assert tokenizer.tok.decode(ids[trained].tolist(), skip_special_tokens=False) == \
            trained_text


def test_prompt_is_a_prefix_of_the_training_conversation(tokenizer):
    t = chat_template("compact")
    for i in range(10):
        ex = tool_call_example(i)
        ids, trained = encode_conversation(tokenizer, t, {"messages": ex.messages,
                                                          "tools": ex.tools})
        prompt = encode_prompt(tokenizer, t, ex.prompt_messages, ex.tools)
        assert ids[:len(prompt)].tolist() == prompt
        assert not trained[:len(prompt)].any() and trained[len(prompt)]
    assert stop_ids(tokenizer, t) == (tokenizer.eos_id,)


def test_chat_records_round_trip_through_array_record(tokenizer, tmp_path):
    t = chat_template("compact")
    convs = [random_conversation(random.Random(i)) for i in range(5)]
    assert write_chat_records(tmp_path / "c.arrayrecord", convs, tokenizer, t) == 5
    source = ArrayRecordSource(str(tmp_path / "c.arrayrecord"))
    for i, conv in enumerate(convs):
        ids, trained = encode_conversation(tokenizer, t, conv)
        record = source[i]
        np.testing.assert_array_equal(record["tokens"], ids)
        np.testing.assert_array_equal(record["target_mask"], trained)


def test_segments_encode_each_piece_alone(tokenizer):
    ids, trained = encode_segments(tokenizer, [("ab ", False), ("cd", True)])
    assert ids.tolist() == tokenizer.encode("ab ") + tokenizer.encode("cd")
    assert trained.tolist() == [False] * len(tokenizer.encode("ab ")) + \
        [True] * len(tokenizer.encode("cd"))
