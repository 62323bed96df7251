"""Row streams: how a global batch is split so that N processes read what one process reads.

Each of the `streams` row streams of a phase is its own packed pipeline over a disjoint slice of
every source's records (records[s::streams]); row r of the global batch comes from stream
r // (batch_size // streams). A process builds only the streams behind the rows it holds, so the
union of the processes' rows of a step is exactly the one-process batch, whatever the process
count, and a checkpoint keeps every stream's iterator state (resumable on any process count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain


def resolve_streams(streams: int, batch_size: int) -> int:
    """The stream count: `streams` (0 = one per row of the global batch), which divides it."""
    streams = int(streams) or batch_size
    if streams < 1 or batch_size % streams:
        raise ValueError(f"data.streams={streams} must divide the global batch_size={batch_size} "
                         "(0 = one stream per row)")
    return streams


def owned_streams(rows: Sequence[int], batch_size: int, streams: int) -> list[int]:
    """Streams behind global `rows` (ascending); rows must cover whole streams."""
    per = batch_size // streams
    rows = sorted(set(int(r) for r in rows))
    if not rows or rows[0] < 0 or rows[-1] >= batch_size:
        raise ValueError(f"rows {rows[:4]}... are not rows of a batch of {batch_size}")
    owned = sorted({r // per for r in rows})
    if len(rows) != len(owned) * per:
        raise ValueError(f"this process holds {len(rows)} rows of the batch, which split "
                         f"data.streams={streams} streams of {per} rows; use more streams "
                         "(data.streams=0: one per row)")
    return owned


def contiguous_rows(batch_size: int, process_index: int, process_count: int) -> list[int]:
    """Rows of process `process_index` when each process holds one contiguous block."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} is not divisible by "
                         f"process_count={process_count}")
    per = batch_size // process_count
    return list(range(process_index * per, (process_index + 1) * per))


class InterleavedStreams(grain.IterDataset):
    """Rows of several streams in batch order: `rows_each` rows of the first, then the next..."""

    def __init__(self, parents: Sequence[grain.IterDataset], rows_each: int):
        super().__init__(list(parents))
        self.rows_each = rows_each

    def __iter__(self) -> _InterleaveIterator:
        return _InterleaveIterator([p.__iter__() for p in self._parents], self.rows_each)

    def __str__(self) -> str:
        return f"InterleavedStreams({len(self._parents)} streams x {self.rows_each} rows)"


class _InterleaveIterator(grain.DatasetIterator):
    """Checkpointable: the state is each stream's state and the position inside the cycle."""

    def __init__(self, parents: list[grain.DatasetIterator], rows_each: int):
        super().__init__(parents)
        self._rows_each, self._k = rows_each, 0

    def __next__(self) -> Any:
        row = next(self._parents[self._k // self._rows_each])
        self._k = (self._k + 1) % (len(self._parents) * self._rows_each)
        return row

    def get_state(self) -> dict[str, Any]:
        return {"streams": [p.get_state() for p in self._parents], "cycle": self._k}

    def set_state(self, state: dict[str, Any]) -> None:
        for parent, s in zip(self._parents, state["streams"], strict=True):
            parent.set_state(s)
        self._k = int(state["cycle"])
