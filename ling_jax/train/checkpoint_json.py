"""JSON payload of a checkpoint's `meta` item: bytes (data-iterator state) base64-wrapped."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

_BYTES_TAG = "__base64__"  # JSON object {_BYTES_TAG: "..."} stands for a bytes value


def _to_json(obj: Any, where: str) -> Any:
    """Copy of `obj` with bytes base64-wrapped; ValueError naming the first value JSON cannot hold."""
    if isinstance(obj, bytes | bytearray):
        return {_BYTES_TAG: base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ValueError(f"{where}: checkpoint JSON needs string keys, got {list(obj)!r}")
        return {k: _to_json(v, f"{where}/{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v, f"{where}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):  # numpy scalars (a logged loss, a step counter)
        return obj.item()
    raise ValueError(f"{where}: {type(obj).__name__} is not JSON-able; convert it to int/float/str/list/dict")


def _from_json(obj: Any) -> Any:
    """Inverse of `_to_json` (tuples come back as lists)."""
    if isinstance(obj, dict):
        if set(obj) == {_BYTES_TAG}:
            return base64.b64decode(obj[_BYTES_TAG])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj
