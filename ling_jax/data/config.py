"""The data-mixture config: its fields, their defaults, and validation that builds nothing.

data_cfg (ml_collections.ConfigDict or dict):
  sources: mapping label -> source (taken in label order), or a list of sources (labelled by
           their "label" field or "kind[i]")
  num_workers=0 (grain worker processes), worker_buffer_size=2, read_threads=2 (per source),
  read_buffer_size=64, shuffle=True, add_bos=False, long_docs="split" (default for sources),
  streams=0 (row streams of the global batch, data/streams.py; 0 = one per row),
  chat_template=None (how conversation sources render: data/chat_template.py; the sft phase
  fills it from tokenizer.chat_template)
A source: {kind, weight=1.0, long_docs=<data default>, label=None, ...kind fields below}.
The tfds / chat_tfds field "name" is the tfds dataset name ("mnist", "my_ds/config:1.0.0");
chat_tfds datasets hold conversations as JSON text (data/chat_tfds.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ling_jax.data.arithmetic import DIFFICULTY_LEVELS
from ling_jax.data.arithmetic import SPLITS as ARITHMETIC_SPLITS
from ling_jax.data.builtin import PYTHON_SPLITS
from ling_jax.data.chat_template import chat_template
from ling_jax.data.code_tasks import DIFFICULTY_LEVELS as CODE_LEVELS
from ling_jax.data.code_tasks import SPLITS as CODE_SPLITS
from ling_jax.data.packing import LONG_DOC_POLICIES
from ling_jax.data.sources import TEXT_SPLITS, resolve_paths
from ling_jax.data.tool_calls import FUNCTIONS as TOOL_FUNCTIONS
from ling_jax.data.tool_calls import SPLITS as TOOL_CALL_SPLITS

REQUIRED = object()  # marker: the field has no default
COMMON_FIELDS: dict[str, Any] = {"kind": REQUIRED, "weight": 1.0, "long_docs": None, "label": None}
SOURCE_FIELDS: dict[str, dict[str, Any]] = {
    "builtin_python": {"split": "train", "max_files": None, "max_bytes": None},
    "builtin_arithmetic": {"split": "train", "num_docs": 100_000, "difficulty": (1, 2, 3),
                           "seed": None, "mask_prompt": True},
    "builtin_code": {"split": "train", "num_docs": 100_000, "difficulty": (1, 2), "seed": None,
                     "mask_prompt": True, "verbose_fraction": 0.0},
    "array_record": {"path": REQUIRED},
    "jsonl": {"path": REQUIRED, "text_key": "text", "prompt_key": "prompt",
              "completion_key": "completion"},
    "chat_jsonl": {"path": REQUIRED, "messages_key": "messages", "tools_key": "tools"},
    "chat_tfds": {"name": REQUIRED, "split": "train", "data_dir": None,
                  "messages_key": "messages", "tools_key": "tools"},
    "builtin_tool_calls": {"split": "train", "num_docs": 100_000, "seed": None, "num_tools": 3},
    "text": {"path": REQUIRED, "split_on": "file"},
    "tfds": {"name": REQUIRED, "split": "train", "data_dir": None, "text_key": "text",
             "tokens_key": None},
}
DATA_FIELDS: dict[str, Any] = {"sources": REQUIRED, "num_workers": 0, "worker_buffer_size": 2,
                               "read_threads": 2, "read_buffer_size": 64, "shuffle": True,
                               "add_bos": False, "long_docs": "split", "streams": 0,
                               "chat_template": None}
# Allowed values of enumerated fields, per kind.
_CHOICES: dict[str, dict[str, tuple]] = {
    "builtin_python": {"split": PYTHON_SPLITS},
    "builtin_arithmetic": {"split": ARITHMETIC_SPLITS},
    "builtin_code": {"split": CODE_SPLITS},
    "builtin_tool_calls": {"split": TOOL_CALL_SPLITS},
    "text": {"split_on": TEXT_SPLITS},
}


def _as_dict(value: Any, where: str) -> dict[str, Any]:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _fill(given: dict[str, Any], fields: dict[str, Any], where: str) -> dict[str, Any]:
    """Defaults filled in; unknown keys and missing required keys rejected."""
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    missing = [k for k, v in fields.items() if v is REQUIRED and given.get(k) is None]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}")
    return {k: given.get(k, default) for k, default in fields.items()}


def _check_source(src: dict[str, Any], where: str) -> None:
    """Value checks of one normalised source, including that its files exist."""
    kind = src["kind"]
    weight = src["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ValueError(f"{where}.weight={weight!r} must be a number > 0")
    if src["long_docs"] not in LONG_DOC_POLICIES:
        raise ValueError(f"{where}.long_docs={src['long_docs']!r}; use one of "
                         f"{LONG_DOC_POLICIES}")
    for field, allowed in _CHOICES.get(kind, {}).items():
        if src[field] not in allowed:
            raise ValueError(f"{where}.{field}={src[field]!r}; use one of {allowed}")
    if "path" in src:
        resolve_paths(src["path"], field=f"{where}.path")
    if kind == "builtin_arithmetic":
        levels = [src["difficulty"]] if isinstance(src["difficulty"], int) else src["difficulty"]
        bad = [d for d in levels if d not in DIFFICULTY_LEVELS]
        if bad or not levels:
            raise ValueError(f"{where}.difficulty={src['difficulty']!r}; levels are "
                             f"{sorted(DIFFICULTY_LEVELS)}")
        if int(src["num_docs"]) < 1:
            raise ValueError(f"{where}.num_docs={src['num_docs']} must be >= 1")
    if kind == "builtin_code":
        levels = [src["difficulty"]] if isinstance(src["difficulty"], int) else src["difficulty"]
        if not levels or any(d not in CODE_LEVELS for d in levels):
            raise ValueError(f"{where}.difficulty={src['difficulty']!r}; levels are "
                             f"{list(CODE_LEVELS)}")
        if not 0.0 <= float(src["verbose_fraction"]) <= 1.0:
            raise ValueError(f"{where}.verbose_fraction={src['verbose_fraction']} must be in "
                             "[0, 1]")
        if int(src["num_docs"]) < 1:
            raise ValueError(f"{where}.num_docs={src['num_docs']} must be >= 1")
    if kind == "builtin_tool_calls":
        if not 1 <= int(src["num_tools"]) <= len(TOOL_FUNCTIONS):
            raise ValueError(f"{where}.num_tools={src['num_tools']} must be in "
                             f"[1, {len(TOOL_FUNCTIONS)}]")
        if int(src["num_docs"]) < 1:
            raise ValueError(f"{where}.num_docs={src['num_docs']} must be >= 1")
    if kind in ("tfds", "chat_tfds") and src["data_dir"] is not None and not os.path.isdir(src["data_dir"]):
        raise ValueError(f"{where}.data_dir={src['data_dir']!r} is not a directory")


def _named_sources(sources: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, raw source dict) pairs from a mapping or a list."""
    if hasattr(sources, "to_dict"):
        sources = sources.to_dict()
    if isinstance(sources, Mapping):
        # Sorted by label: ConfigDict sorts its keys, so plain dicts behave the same.
        return [(str(k), _as_dict(v, f"data.sources.{k}")) for k, v in sorted(sources.items())]
    if isinstance(sources, (list, tuple)):
        named = []
        for i, raw in enumerate(sources):
            raw = _as_dict(raw, f"data.sources[{i}]")
            named.append((raw.get("label") or f"{raw.get('kind')}[{i}]", raw))
        return named
    raise ValueError("data.sources must be a mapping name -> source or a list of sources")


def validate_data_config(data_cfg: Any) -> dict[str, Any]:
    """Checks a data config without building anything; returns it normalised (plain dicts).

    The result has every default filled in and "sources" as a list of dicts with a "label".
    """
    cfg = _fill(_as_dict(data_cfg, "data"), DATA_FIELDS, "data")
    for field in ("num_workers", "read_threads", "read_buffer_size", "worker_buffer_size",
                  "streams"):
        value = cfg[field]
        minimum = 0 if field in ("num_workers", "streams") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"data.{field}={value!r} must be an integer >= {minimum}")
    if cfg["long_docs"] not in LONG_DOC_POLICIES:
        raise ValueError(f"data.long_docs={cfg['long_docs']!r}; use one of {LONG_DOC_POLICIES}")
    if cfg["chat_template"] is not None:
        chat_template(cfg["chat_template"])  # raises naming the bad field
    named = _named_sources(cfg["sources"])
    if not named:
        raise ValueError("data.sources is empty; give at least one source")
    sources, seen = [], set()
    for name, raw in named:
        where = f"data.sources.{name}"
        kind = raw.get("kind")
        if kind not in SOURCE_FIELDS:
            raise ValueError(f"{where}.kind={kind!r} is unknown; allowed kinds: "
                             f"{sorted(SOURCE_FIELDS)}")
        if name in seen:
            raise ValueError(f"{where}: two sources share the name {name!r}; rename one")
        seen.add(name)
        src = _fill(raw, COMMON_FIELDS | SOURCE_FIELDS[kind], where)
        src["label"] = name
        if src["long_docs"] is None:
            src["long_docs"] = cfg["long_docs"]
        _check_source(src, where)
        sources.append(src)
    cfg["sources"] = sources
    return cfg
