"""Minimal safetensors reader/writer on numpy + ml_dtypes (bf16 and FP8 included).

Reading memory-maps each file and copies one tensor at a time, so an import holds about one copy of
the parameters; a truncated or malformed file is reported with its path before anything is built.
"""

from __future__ import annotations

import json
import pathlib
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as written."""


class SafetensorsFile:
    """Header of one file plus lazy, per-tensor reads."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{self.path}: truncated (no header length)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > size - 8:
                raise SafetensorsError(f"{self.path}: truncated or not safetensors "
                                       f"(header of {header_len} bytes in a {size}-byte file)")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SafetensorsError(f"{self.path}: header is not valid JSON ({e})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self.entries: dict[str, dict] = header
        self._data_start = 8 + header_len
        data_size = size - self._data_start
        for key, entry in header.items():
            if entry.get("dtype") not in DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {key!r} has unsupported dtype "
                                       f"{entry.get('dtype')!r}")
            begin, end = entry["data_offsets"]
            nbytes = int(np.prod(entry["shape"], dtype=np.int64)) * DTYPES[entry["dtype"]].itemsize
            if end > data_size:
                raise SafetensorsError(f"{self.path}: truncated — tensor {key!r} ends at byte {end} "
                                       f"but the file holds {data_size} data bytes")
            if end - begin != nbytes:
                raise SafetensorsError(f"{self.path}: tensor {key!r} spans {end - begin} bytes, "
                                       f"its shape and dtype need {nbytes}")
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def get(self, key: str) -> np.ndarray:
        """A fresh in-memory copy of one tensor."""
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        entry = self.entries[key]
        begin, end = entry["data_offsets"]
        raw = self._mmap[self._data_start + begin:self._data_start + end]
        return np.array(raw).view(DTYPES[entry["dtype"]]).reshape(entry["shape"])


def write_file(path: str | pathlib.Path, tensors: dict[str, np.ndarray],
               metadata: dict[str, str] | None = None) -> int:
    """Write tensors (in the given order) to `path`; returns bytes of tensor data written."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = []
    for key, value in tensors.items():
        value = np.ascontiguousarray(value)
        if value.dtype not in NAMES:
            raise SafetensorsError(f"cannot write tensor {key!r} of dtype {value.dtype}")
        header[key] = {"dtype": NAMES[value.dtype], "shape": list(value.shape),
                       "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
        arrays.append(value)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for value in arrays:
            f.write(value.tobytes())
    return offset
