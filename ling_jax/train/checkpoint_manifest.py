"""Integrity manifests for committed train checkpoints: size and CRC-32 of every file of a step.

`DIR/<step>/ling_manifest.json` is written by process 0 once orbax has committed the step (so it
describes the final bytes) via a temporary file renamed into place: it is either absent or whole.
A step without one was either saved before manifests existed or its process died between orbax's
commit and the manifest; such a step is accepted when its structure is complete (both items and
their metadata present), since orbax's commit already vouches for a complete write.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from etils import epath

MANIFEST = "ling_manifest.json"
_ITEMS = ("state", "meta")
_CHUNK = 1 << 23  # 8 MiB reads while hashing


class CheckpointCorruptError(ValueError):
    """A committed checkpoint whose files no longer match what was saved (one-line message)."""


def _crc32(path: epath.Path) -> str:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _files(step_dir: epath.Path) -> list[epath.Path]:
    """Every regular file under `step_dir` except the manifest, sorted by relative path."""
    out, stack = [], [step_dir]
    while stack:
        for entry in stack.pop().iterdir():
            if entry.is_dir():
                stack.append(entry)
            elif entry.name != MANIFEST and not entry.name.startswith(f".{MANIFEST}"):
                out.append(entry)
    return sorted(out, key=lambda p: str(p))


def _relative(path: epath.Path, root: epath.Path) -> str:
    return str(path)[len(str(root)) :].lstrip("/")


def write_manifest(step_dir: epath.Path, *, hashes: bool = True) -> None:
    """Record size and CRC-32 of each file of a committed step (atomic: temp file + rename).

    `hashes=False` records sizes only (buckets: hashing would read the whole step back)."""
    files = {
        _relative(p, step_dir): [p.stat().length, _crc32(p) if hashes else None] for p in _files(step_dir)
    }
    tmp = step_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=0, sort_keys=True))
    tmp.replace(step_dir / MANIFEST)  # atomic; overwrites a stale one


def has_manifest(step_dir: epath.Path) -> bool:
    return (step_dir / MANIFEST).exists()


def _structure_problem(step_dir: epath.Path) -> str | None:
    """What a step without a manifest lacks to be restorable at all (None: looks complete)."""
    for item, needed in (("state", "_METADATA"), ("meta", "metadata")):
        if not (step_dir / item).is_dir():
            return f"its '{item}/' item is missing"
        if not (step_dir / item / needed).exists():
            return f"'{item}/{needed}' is missing"
    return None


def find_problem(step_dir: epath.Path, *, hashes: bool = True) -> str | None:
    """Why `step_dir` does not hold the bytes its manifest records, or None when it does.

    Without a manifest only the structure is checked (see the module doc). `hashes=False` checks
    presence and sizes only (no reading of the data).
    """
    manifest = step_dir / MANIFEST
    if not manifest.exists():
        return _structure_problem(step_dir)
    try:
        recorded: dict[str, Any] = json.loads(manifest.read_text())["files"]
        if not isinstance(recorded, dict):
            raise TypeError("'files' is not an object")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"its {MANIFEST} is unreadable ({type(e).__name__})"
    for name, entry in sorted(recorded.items()):
        path = step_dir / name
        if not path.exists():
            return f"'{name}' is missing"
        try:
            size, crc = entry
        except (TypeError, ValueError):
            return f"its {MANIFEST} entry for '{name}' is malformed"
        have = path.stat().length
        if have != size:
            return f"'{name}' has {have} bytes, {size} were saved"
        if hashes and crc is not None and _crc32(path) != crc:
            return f"'{name}' has changed since it was saved (CRC-32 mismatch)"
    return _structure_problem(step_dir)
