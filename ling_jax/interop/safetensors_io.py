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


MAX_HEADER = 100 << 20  # bytes; the reference implementation's limit too
FLOAT_NAMES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3"})


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise SafetensorsError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(key: str, entry: object) -> tuple[int, int]:
    """(begin, end) of one header entry; SafetensorsError (without the path) on any violation."""
    if not isinstance(entry, dict):
        raise SafetensorsError(f"tensor {key!r}: entry is a {type(entry).__name__}, expected an "
                               "object with dtype, shape and data_offsets")
    missing = [f for f in ("dtype", "shape", "data_offsets") if f not in entry]
    if missing:
        raise SafetensorsError(f"tensor {key!r}: no {missing[0]!r} field")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise SafetensorsError(f"tensor {key!r} has unsupported dtype {dtype!r} "
                               f"(supported: {sorted(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(f"tensor {key!r}: shape {shape!r} is not a list of "
                               "non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)):
        raise SafetensorsError(f"tensor {key!r}: data_offsets {offsets!r} is not a pair of "
                               "integers [begin, end]")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise SafetensorsError(f"tensor {key!r}: data_offsets [{begin}, {end}] must satisfy "
                               "0 <= begin <= end")
    nbytes = DTYPES[dtype].itemsize
    for d in shape:
        nbytes *= d
    if end - begin != nbytes:
        raise SafetensorsError(f"tensor {key!r} spans {end - begin} bytes, its shape and dtype "
                               f"need {nbytes}")
    return begin, end


def _check_tiling(spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The spans must cover [0, data_size) exactly: no holes, no overlaps, nothing past the end."""
    position, previous = 0, None
    for begin, end, key in sorted(spans):
        if end > data_size:
            raise SafetensorsError(f"truncated: tensor {key!r} ends at byte {end} but the file "
                                   f"holds {data_size} data bytes")
        if begin < position:
            raise SafetensorsError(f"tensor {key!r} (bytes {begin}-{end}) overlaps tensor "
                                   f"{previous!r}")
        if begin > position:
            raise SafetensorsError(f"hole: data bytes {position}-{begin} before tensor {key!r} "
                                   "belong to no tensor")
        position, previous = end, key
    if position != data_size:
        raise SafetensorsError(f"data bytes {position}-{data_size} after the last tensor belong "
                               "to no tensor")


def parse_header(raw: bytes, data_size: int) -> tuple[dict[str, str], dict[str, dict]]:
    """(metadata, entries) of a header, checked to the format spec; errors name the tensor."""
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError("__metadata__ must be an object of strings")
    spans = [(*_check_entry(key, entry), key) for key, entry in header.items()]
    _check_tiling(spans, data_size)
    return metadata, header


class SafetensorsFile:
    """Header of one file (checked to the spec before any tensor is read) plus lazy reads."""

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
            if header_len > MAX_HEADER:
                raise SafetensorsError(f"{self.path}: header of {header_len} bytes exceeds the "
                                       f"{MAX_HEADER}-byte limit")
            raw = f.read(header_len)
        self._data_start = 8 + header_len
        try:
            self.metadata, self.entries = parse_header(raw, size - self._data_start)
        except SafetensorsError as e:
            raise SafetensorsError(f"{self.path}: {e}") from None
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype_name(self, key: str) -> str:
        """The safetensors dtype name of `key` ('BF16', 'I32', ...)."""
        return self.entries[key]["dtype"]

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
