"""Greedy packing of documents into rows of fixed length with segment ids and positions.

Documents arrive in order with their features already computed (data/documents.py). Each row is
filled with whole documents while they fit; the first document that does not fit starts the next
row (greedy, deterministic, no reordering). A document longer than the row is split into chunks of
`seq_len` tokens (counted in "stats/split_docs"), each chunk its own segment whose positions restart
at 0; its targets stay the next tokens of the same document. With long_docs="error" such a
document raises instead. Documents with no trained target (fewer than two tokens, or an all-prompt
record) are skipped and counted in "stats/empty_docs".

Row layout (numpy, length seq_len): inputs/targets int32, loss_mask float32, segment_ids int32
(1..n per document inside the row, 0 = padding), positions int32; plus the int32 scalars
stats/source, stats/docs, stats/empty_docs, stats/split_docs: events since the previous row.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

LONG_DOC_POLICIES = ("split", "error")
STAT_KEYS = ("stats/docs", "stats/empty_docs", "stats/split_docs")


class PackedIterDataset(grain.IterDataset):
    """Packs a stream of document features (dicts from DocumentEncoder) into fixed-length rows."""

    def __init__(self, parent: grain.IterDataset, seq_len: int, *, source_name: str,
                 source_id: int = 0, long_docs: str = "split", pad_id: int = 0,
                 max_consecutive_empty: int | None = None):
        super().__init__(parent)
        if long_docs not in LONG_DOC_POLICIES:
            raise ValueError(f"long_docs={long_docs!r} is unknown; use one of {LONG_DOC_POLICIES}")
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be at least 2")
        self.seq_len, self.source_name, self.source_id = seq_len, source_name, source_id
        self.long_docs, self.pad_id = long_docs, pad_id
        self.max_consecutive_empty = max_consecutive_empty

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self)

    def __str__(self) -> str:
        return f"PackedIterDataset(seq_len={self.seq_len}, source={self.source_name!r})"


class _PackIterator(grain.DatasetIterator):
    """Checkpointable packing iterator.

    Between rows the only carried data is the pending document (the one that did not fit), so the
    state is the parent's state from just before that document was read plus the offset already
    emitted; set_state re-reads it. Rows are therefore reproduced exactly after a restore.
    """

    def __init__(self, parent: grain.DatasetIterator, cfg: PackedIterDataset):
        super().__init__(parent)
        self._cfg = cfg
        self._doc: dict[str, Any] | None = None
        self._doc_state: dict[str, Any] | None = None
        self._offset = 0
        self._counts = dict.fromkeys(STAT_KEYS, 0)  # events not yet reported in a row
        self._empty_run = 0
        self._exhausted = False

    def _fetch(self) -> None:
        """Reads the next document with a trained target into self._doc (counting skips)."""
        cfg = self._cfg
        while True:
            state = self._parent.get_state()
            doc = next(self._parent)
            if not doc["loss_mask"].any():
                self._counts["stats/empty_docs"] += 1
                self._empty_run += 1
                if cfg.max_consecutive_empty and self._empty_run > cfg.max_consecutive_empty:
                    raise ValueError(f"source {cfg.source_name!r}: {self._empty_run} documents in "
                                     "a row had no trainable tokens; the source is effectively "
                                     "empty, check its files / fields")
                continue
            self._empty_run = 0
            length = len(doc["inputs"])
            if length > cfg.seq_len:
                if cfg.long_docs == "error":
                    raise ValueError(
                        f"source {cfg.source_name!r}, document {doc['index']}: {length} tokens > "
                        f"seq_len={cfg.seq_len}; set long_docs='split' or filter the data")
                self._counts["stats/split_docs"] += 1
            self._counts["stats/docs"] += 1
            self._doc, self._doc_state, self._offset = doc, state, 0
            return

    def _empty_row(self) -> dict[str, np.ndarray]:
        seq_len = self._cfg.seq_len
        return {"inputs": np.full(seq_len, self._cfg.pad_id, np.int32),
                "targets": np.full(seq_len, self._cfg.pad_id, np.int32),
                "loss_mask": np.zeros(seq_len, np.float32),
                "segment_ids": np.zeros(seq_len, np.int32),
                "positions": np.zeros(seq_len, np.int32)}

    def __next__(self) -> dict[str, np.ndarray]:
        if self._exhausted:
            raise StopIteration
        row, fill, segment, seq_len = self._empty_row(), 0, 0, self._cfg.seq_len
        while fill < seq_len:
            if self._doc is None:
                try:
                    self._fetch()
                except StopIteration:
                    if fill == 0:
                        raise
                    self._exhausted = True  # emit the last partial row, then stop
                    break
            doc = self._doc
            assert doc is not None
            piece = min(len(doc["inputs"]) - self._offset, seq_len)
            if piece > seq_len - fill:
                break  # does not fit: this document opens the next row
            segment += 1
            src, dst = slice(self._offset, self._offset + piece), slice(fill, fill + piece)
            for key in ("inputs", "targets", "loss_mask"):
                row[key][dst] = doc[key][src]
            row["segment_ids"][dst] = segment
            row["positions"][dst] = np.arange(piece, dtype=np.int32)
            fill += piece
            self._offset += piece
            if self._offset == len(doc["inputs"]):
                self._doc, self._doc_state = None, None
        row["stats/source"] = np.int32(self._cfg.source_id)
        for key in STAT_KEYS:
            row[key] = np.int32(self._counts[key])
            self._counts[key] = 0
        return row

    def get_state(self) -> dict[str, Any]:
        pending = self._doc is not None
        return {"parent": self._doc_state if pending else self._parent.get_state(),
                "offset": self._offset if pending else -1,
                "counts": dict(self._counts), "empty_run": self._empty_run,
                "exhausted": self._exhausted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._doc, self._doc_state, self._offset = None, None, 0
        if state["offset"] >= 0:
            self._doc_state = state["parent"]
            self._doc = next(self._parent)  # re-read the pending document, already counted
            self._offset = int(state["offset"])
        self._counts = {k: int(v) for k, v in state["counts"].items()}
        self._empty_run = int(state["empty_run"])
        self._exhausted = bool(state["exhausted"])
