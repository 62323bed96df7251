"""What the processes of a multi-process run agree on between steps (host-side, small).

Everything here is a no-op with one process. With several, each call is a collective that every
process must make in the same order (the loop makes them at the same step boundaries).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np


def _allgather(x: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x))


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able `obj`, in process order (one process: [obj])."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = _allgather(np.array([data.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = _allgather(padded).reshape(len(sizes), -1)
    return [json.loads(rows[i, :n].tobytes()) for i, n in enumerate(sizes)]


def any_process(flag: bool) -> bool:
    """True when `flag` is true on at least one process (e.g. a SIGTERM reached only some)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(_allgather(np.array([int(flag)], np.int32)).max())


def barrier(name: str) -> None:
    """Wait until every process reaches the same named point."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def host_value(x) -> np.ndarray:
    """The whole value of an array on this host: a multi-process array's shards on other hosts are
    gathered (every process must call this for the same array, in the same order)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
