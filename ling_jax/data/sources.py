"""File-backed document sources: random access (len / getitem) over records (data/documents.py).

Every source is picklable (file handles are opened per read) so grain worker processes can use it.
An empty file is an error that names it; blank lines of JSONL/text files are not documents.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module

from ling_jax.data.token_records import decode_token_record

TEXT_SPLITS = ("file", "paragraph", "line")


def resolve_paths(path: str | os.PathLike | Sequence[str | os.PathLike], field: str = "path"
                  ) -> list[str]:
    """Files named by a path, a glob pattern or a list of those (sorted per pattern)."""
    patterns = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not patterns:
        raise ValueError(f"{field} is empty; give a file, a glob pattern or a list of them")
    files: list[str] = []
    for pattern in map(os.fspath, patterns):
        if os.path.isdir(pattern):
            raise ValueError(f"{field}={pattern!r} is a directory; give files or a glob such as "
                             f"{os.path.join(pattern, '*')!r}")
        matches = [pattern] if os.path.isfile(pattern) else sorted(glob.glob(pattern))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise ValueError(f"{field}={pattern!r} matches no file")
        files.extend(matches)
    return files


def _line_spans(path: str) -> list[tuple[int, int, int]]:
    """(start byte, end byte, line number) of every non-blank line of a file."""
    spans, pos = [], 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                spans.append((pos, pos + len(line), number))
            pos += len(line)
    return spans


def _paragraph_spans(path: str) -> list[tuple[int, int, int]]:
    """Spans of blank-line separated paragraphs (consecutive non-blank lines merged)."""
    merged: list[tuple[int, int, int]] = []
    previous_line = -1
    for start, end, number in _line_spans(path):
        if merged and number == previous_line + 1:
            merged[-1] = (merged[-1][0], end, merged[-1][2])
        else:
            merged.append((start, end, number))
        previous_line = number
    return merged


class _SpanSource:
    """Documents that are byte spans of files, indexed once at construction."""

    def __init__(self, name: str, files: list[str], spans_of):
        self.name, self.files = name, files
        file_ids, starts, ends, lines = [], [], [], []
        for file_id, path in enumerate(files):
            spans = spans_of(path)
            if not spans:
                raise ValueError(f"source {name!r}: file {path} is empty (no documents)")
            for start, end, line in spans:
                file_ids.append(file_id), starts.append(start), ends.append(end), lines.append(line)
        self._file_ids = np.asarray(file_ids, np.int32)
        self._starts, self._ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        self._lines = np.asarray(lines, np.int64)

    def __len__(self) -> int:
        return len(self._starts)

    def _read(self, index: int) -> tuple[str, str]:
        """(text of document `index`, 'path:line' for messages)."""
        path = self.files[self._file_ids[index]]
        with open(path, "rb") as f:
            f.seek(int(self._starts[index]))
            data = f.read(int(self._ends[index] - self._starts[index]))
        return data.decode("utf-8", errors="replace"), f"{path}:{self._lines[index]}"


class JsonlSource(_SpanSource):
    """One JSON object per line: a `text_key` field, or a prompt/completion pair (prompt masked)."""

    def __init__(self, path, *, name: str = "jsonl", text_key: str = "text",
                 prompt_key: str = "prompt", completion_key: str = "completion"):
        super().__init__(name, resolve_paths(path), _line_spans)
        self.text_key, self.prompt_key, self.completion_key = text_key, prompt_key, completion_key

    def __getitem__(self, index: int) -> dict[str, Any]:
        line, where = self._read(index)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"source {self.name!r}: {where} is not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"source {self.name!r}: {where} is not a JSON object")
        if self.prompt_key in obj and self.completion_key in obj:
            return {"index": index, "prompt": str(obj[self.prompt_key]),
                    "completion": str(obj[self.completion_key])}
        if self.text_key not in obj:
            raise ValueError(f"source {self.name!r}: {where} has no {self.text_key!r} field (nor a "
                             f"{self.prompt_key!r}/{self.completion_key!r} pair); keys are "
                             f"{sorted(obj)}; set text_key")
        return {"index": index, "text": str(obj[self.text_key])}


class ChatJsonlSource(_SpanSource):
    """One conversation per line: {"messages": [{role, content, tool_calls?}...], "tools"?: [...]}
    (rendered later with the pipeline's chat template; only assistant turns are trained)."""

    def __init__(self, path, *, name: str = "chat_jsonl", messages_key: str = "messages",
                 tools_key: str = "tools"):
        super().__init__(name, resolve_paths(path), _line_spans)
        self.messages_key, self.tools_key = messages_key, tools_key

    def __getitem__(self, index: int) -> dict[str, Any]:
        line, where = self._read(index)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"source {self.name!r}: {where} is not valid JSON ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(self.messages_key), list):
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"source {self.name!r}: {where} has no {self.messages_key!r} list "
                             f"(found {keys}); set messages_key")
        record: dict[str, Any] = {"index": index, "messages": obj[self.messages_key]}
        if obj.get(self.tools_key) is not None:
            record["tools"] = obj[self.tools_key]
        return record


class TextSource(_SpanSource):
    """Plain text: one document per file, per blank-line separated paragraph, or per line."""

    def __init__(self, path, *, name: str = "text", split_on: str = "file"):
        if split_on not in TEXT_SPLITS:
            raise ValueError(f"split_on={split_on!r} is unknown; use one of {TEXT_SPLITS}")
        spans_of = {"file": _whole_file_span, "paragraph": _paragraph_spans,
                    "line": _line_spans}[split_on]
        super().__init__(name, resolve_paths(path), spans_of)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "text": self._read(index)[0]}


def _whole_file_span(path: str) -> list[tuple[int, int, int]]:
    size = os.path.getsize(path)
    return [(0, size, 1)] if size else []


class ArrayRecordSource:
    """Pre-tokenized documents in ArrayRecord files written by `write_token_records`."""

    def __init__(self, path, *, name: str = "array_record"):
        self.name, self.files = name, resolve_paths(path)
        for file in self.files:
            reader = array_record_module.ArrayRecordReader(file)
            count = reader.num_records()
            reader.close()
            if count == 0:
                raise ValueError(f"source {name!r}: file {file} is empty (no records)")
        self._records = grain.sources.ArrayRecordDataSource(self.files)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            tokens, mask = decode_token_record(self._records[index])
        except ValueError as e:
            raise ValueError(f"source {self.name!r}, record {index}: {e}") from None
        record: dict[str, Any] = {"index": index, "tokens": tokens}
        if mask is not None:
            record["target_mask"] = mask
        return record


def open_tfds(name: str, split: str, data_dir: str | None, source_name: str):
    """`tfds.data_source` of a dataset prepared in array_record format (non-empty), or a
    ValueError naming the source."""
    import tensorflow_datasets as tfds  # imported here: only tfds sources pay for it

    try:
        records = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # tfds raises many types; the message is what matters
        raise ValueError(f"source {source_name!r}: cannot open tfds dataset {name!r} split "
                         f"{split!r} in data_dir={data_dir!r}: {e}") from e
    if len(records) == 0:
        raise ValueError(f"source {source_name!r}: tfds dataset {name!r} split {split!r} "
                         "has no examples")
    return records


class TfdsSource:
    """A tensorflow-datasets dataset prepared in array_record format (`tfds.data_source`).

    Uses `tokens_key` (a sequence of ids) when given, else the string feature `text_key`.
    """

    def __init__(self, name: str, *, split: str = "train", data_dir: str | None = None,
                 text_key: str = "text", tokens_key: str | None = None,
                 source_name: str = "tfds"):
        self.name, self.text_key, self.tokens_key = source_name, text_key, tokens_key
        self._records = open_tfds(name, split, data_dir, source_name)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._records[index]
        key = self.tokens_key or self.text_key
        if key not in example:
            raise ValueError(f"source {self.name!r}: tfds example {index} has no feature {key!r}; "
                             f"features are {sorted(example)}; set text_key / tokens_key")
        if self.tokens_key:
            return {"index": index, "tokens": np.asarray(example[key], np.int64)}
        text = example[key]
        return {"index": index, "text": text.decode("utf-8") if isinstance(text, bytes) else text}
