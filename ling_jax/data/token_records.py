"""The on-disk format of pre-tokenized documents: one ArrayRecord record per document.

A record is a 12-byte header (magic b"LJTK", uint32 token count, uint32 flags; little-endian) then
the token ids as int32, then, when flag bit 0 is set, one uint8 per token: 1 when the token is a
training target, 0 for a prompt token whose prediction is not trained (mid-training data).
"""

from __future__ import annotations

import os
import pathlib
import struct
from collections.abc import Iterable, Sequence

import numpy as np
from array_record.python import array_record_module

MAGIC = b"LJTK"
_HEADER = struct.Struct("<4sII")
_HAS_TARGET_MASK = 1


def encode_token_record(tokens: Sequence[int] | np.ndarray,
                        target_mask: Sequence[int] | np.ndarray | None = None) -> bytes:
    """Serialises one document (token ids and an optional per-token target mask)."""
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
        raise ValueError("token ids must be in [0, 2**31) to be stored as int32")
    flags = 0
    tail = b""
    if target_mask is not None:
        mask = np.asarray(target_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"target_mask shape {mask.shape} != tokens shape {ids.shape}")
        flags |= _HAS_TARGET_MASK
        tail = (mask != 0).astype(np.uint8).tobytes()
    return _HEADER.pack(MAGIC, ids.size, flags) + ids.astype("<i4").tobytes() + tail


def decode_token_record(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(tokens int32 [L], target_mask bool [L] or None) of one record; ValueError if malformed."""
    if len(data) < _HEADER.size:
        raise ValueError("record is shorter than the ling-jax token header")
    magic, count, flags = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"record has magic {magic!r}, not {MAGIC!r}: not a ling-jax token record "
                         "(write files with ling_jax.data.write_token_records)")
    expected = _HEADER.size + 4 * count + (count if flags & _HAS_TARGET_MASK else 0)
    if len(data) != expected:
        raise ValueError(f"record length {len(data)} != {expected} expected from its header")
    end = _HEADER.size + 4 * count
    tokens = np.frombuffer(data, dtype="<i4", count=count, offset=_HEADER.size).astype(np.int32)
    if not flags & _HAS_TARGET_MASK:
        return tokens, None
    return tokens, np.frombuffer(data, dtype=np.uint8, count=count, offset=end).astype(bool)


def write_token_records(path: str | os.PathLike, docs: Iterable[Sequence[int] | np.ndarray],
                        target_masks: Iterable[Sequence[int] | np.ndarray | None] | None = None
                        ) -> int:
    """Writes documents of token ids to an ArrayRecord file; returns the number written."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    masks = iter(target_masks) if target_masks is not None else None
    # group_size:1 keeps random access cheap (one record per chunk).
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    count = 0
    try:
        for doc in docs:
            mask = next(masks) if masks is not None else None
            writer.write(encode_token_record(doc, mask))
            count += 1
    finally:
        writer.close()
    return count
