"""Conversations to token ids with a per-token target mask, the one way training, evaluation and
generation encode them: each (text, trained) segment of `render_segments` is encoded on its own
and the ids are concatenated (so a prompt encodes to the same ids as that prefix of a training
conversation).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ling_jax.data.chat_template import ChatTemplate, render_segments
from ling_jax.data.token_records import write_token_records
from ling_jax.data.tokenizers import Tokenizer


def encode_segments(tokenizer: Tokenizer, segments: Sequence[tuple[str, bool]]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [L], trained bool [L]) of rendered segments."""
    ids: list[int] = []
    trained: list[bool] = []
    for text, is_trained in segments:
        piece = tokenizer.encode(text)
        ids += piece
        trained += [is_trained] * len(piece)
    return np.asarray(ids, np.int64), np.asarray(trained, bool)


def check_conversation(record: Mapping[str, Any], where: str) -> tuple[list, list | None]:
    """(messages, tools) of a {"messages": [...], "tools"?: [...]} record, or ValueError."""
    messages, tools = record.get("messages"), record.get("tools")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of turns")
    if tools is not None and not isinstance(tools, list):
        raise ValueError(f"{where}: 'tools' must be a list of function schemas")
    return messages, tools


def encode_conversation(tokenizer: Tokenizer, template: ChatTemplate,
                        record: Mapping[str, Any], where: str = "conversation"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, trained) of a whole conversation record (assistant turns trained)."""
    messages, tools = check_conversation(record, where)
    try:
        return encode_segments(tokenizer, render_segments(template, messages, tools))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def encode_prompt(tokenizer: Tokenizer, template: ChatTemplate, messages: Sequence[Mapping],
                  tools: Sequence[Any] | None = None) -> list[int]:
    """Ids of a conversation so far plus the assistant's turn start (what a model continues)."""
    segments = render_segments(template, messages, tools, add_generation_prompt=True)
    return encode_segments(tokenizer, segments)[0].tolist()


def stop_ids(tokenizer: Tokenizer, template: ChatTemplate) -> tuple[int, ...]:
    """Ids that end an assistant turn in generation: end-of-text, and the template's end of turn
    (stripped of whitespace) when it is a single token."""
    ids = {int(tokenizer.eos_id)}
    end = tokenizer.encode(template.end_of_turn.strip())
    if len(end) == 1:
        ids.add(int(end[0]))
    return tuple(sorted(ids))


def cut_at_end_of_turn(text: str, template: ChatTemplate) -> str:
    """A generated assistant turn up to (not including) the template's end of turn."""
    end = template.end_of_turn.strip()
    return text.split(end, 1)[0] if end else text



def write_chat_records(path, records: Iterable[Mapping[str, Any]], tokenizer: Tokenizer,
                       template: ChatTemplate) -> int:
    """Renders and tokenizes conversations once into an ArrayRecord file of token records with
    target masks (data/token_records.py): the path for large SFT sets, read back by an
    `array_record` source with no tokenizer work per step. Returns the number written."""
    masks: list[np.ndarray] = []

    def ids_of():  # write_token_records reads one doc, then its mask: they stay in step
        for i, record in enumerate(records):
            ids, trained = encode_conversation(tokenizer, template, record, f"conversation {i}")
            masks.append(trained)
            yield ids

    def masks_of():
        while masks:
            yield masks.pop()

    return write_token_records(path, ids_of(), masks_of())


def read_template(spec: str | None):
    """A ChatTemplate from a preset name or a JSON file of fields."""
    from ling_jax.data.chat_template import chat_template

    if spec and spec.endswith(".json"):
        path = pathlib.Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--chat_template: file {spec} not found")
        return chat_template(json.loads(path.read_text()))
    return chat_template(spec)


def prepare(inputs: list[str], tokenizer, template, out: pathlib.Path, *,
            messages_key: str = "messages", tools_key: str = "tools") -> int:
    """Writes `out` (atomically) from every conversation of `inputs`; returns the count."""
    from ling_jax.data.sources import ChatJsonlSource

    source = ChatJsonlSource(inputs, messages_key=messages_key, tools_key=tools_key)
    tmp = out.with_name(out.name + ".tmp")
    try:
        count = write_chat_records(tmp, (source[i] for i in range(len(source))), tokenizer,
                                   template)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return count
