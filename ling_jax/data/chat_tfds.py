"""Conversations in a tensorflow-datasets dataset: the tfds path for large SFT sets.

The dataset is stored in tfds's `array_record` file format and read back with `tfds.data_source`
(random access, no TensorFlow). Each example holds one conversation as JSON text, the same object
a `chat_jsonl` line holds: feature `messages` (a JSON list of turns) and `tools` (a JSON list of
function schemas, "" when none). `write_tfds_conversations` prepares such a dataset from any
iterable of records (streamed, never held in memory); a `chat_tfds` data source reads it.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Iterable, Mapping
from typing import Any

from ling_jax.data.chat_encoding import check_conversation
from ling_jax.data.sources import open_tfds

FEATURE_KEYS = ("messages", "tools")


def conversation_example(record: Mapping[str, Any], where: str = "conversation") -> dict[str, str]:
    """The tfds example (JSON text per feature) of a {"messages": [...], "tools"?: [...]} record."""
    messages, tools = check_conversation(record, where)
    return {"messages": json.dumps(messages), "tools": json.dumps(tools) if tools else ""}


def _builder_class(name: str, version: str):
    """A GeneratorBasedBuilder for `name` whose splits come from record iterables (kwargs of
    `_split_generators` would need a download manager; the records ride on the instance)."""
    import tensorflow_datasets as tfds  # imported here: only tfds users pay for it

    def info(self):
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {key: text for key in FEATURE_KEYS}), disable_shuffling=True)  # records in order

    def split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split, records)
                for split, records in self.split_records.items()}

    def generate_examples(self, split, records):
        for i, record in enumerate(records):
            yield i, conversation_example(record, f"split {split!r}, conversation {i}")

    body = {"name": name, "VERSION": tfds.core.Version(version),
            # tfds 4.9.10 finds a builder's code through `importlib_resources` (absent on
            # Python >= 3.9); None means "no checksum file to read" (tests/data/conftest.py).
            "code_path": None, "_info": info, "_split_generators": split_generators,
            "_generate_examples": generate_examples}
    return types.new_class("ChatConversations", (tfds.core.GeneratorBasedBuilder,),
                           {"skip_registration": True}, lambda ns: ns.update(body))


def write_tfds_conversations(name: str, splits: Mapping[str, Iterable[Mapping[str, Any]]],
                             data_dir: str | os.PathLike, version: str = "1.0.0") -> str:
    """Prepares tfds dataset `name` (array_record files under `data_dir`) with one split per
    entry of `splits`; returns the dataset's directory."""
    builder = _builder_class(name, version)(data_dir=os.fspath(data_dir),
                                           file_format="array_record")
    builder.split_records = dict(splits)
    builder.download_and_prepare()
    return os.fspath(builder.data_dir)


class TfdsChatSource:
    """Conversation records ({"index", "messages", "tools"?}) of a tfds dataset prepared in
    array_record format, rendered later with the pipeline's chat template (as chat_jsonl)."""

    def __init__(self, name: str, *, split: str = "train", data_dir: str | None = None,
                 messages_key: str = "messages", tools_key: str = "tools",
                 source_name: str = "chat_tfds"):
        self.name, self.messages_key, self.tools_key = source_name, messages_key, tools_key
        self._records = open_tfds(name, split, data_dir, source_name)

    def __len__(self) -> int:
        return len(self._records)

    def _json(self, example: Mapping[str, Any], key: str, index: int) -> Any:
        text = example[key]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"source {self.name!r}: tfds example {index} feature {key!r} is not "
                             f"valid JSON ({e})") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._records[index]
        if self.messages_key not in example:
            raise ValueError(f"source {self.name!r}: tfds example {index} has no feature "
                             f"{self.messages_key!r}; features are {sorted(example)}; set "
                             "messages_key")
        messages = self._json(example, self.messages_key, index)
        if not isinstance(messages, list):
            raise ValueError(f"source {self.name!r}: tfds example {index} feature "
                             f"{self.messages_key!r} is not a JSON list of turns")
        record: dict[str, Any] = {"index": index, "messages": messages}
        tools = self._json(example, self.tools_key, index) if self.tools_key in example else None
        if tools is not None:
            record["tools"] = tools
        return record
