"""Helpers for the reliability suite: run the CLI in a subprocess, assert one clean error line,
and damage files the way disks and users do."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
ENTRY = "from ling_jax.cli.main import run; run()"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "XLA_FLAGS": "",
       "PYTHONPATH": str(REPO)}


def cli(*args: object, timeout: float = 300, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`ling-jax ARGS` from the repository root (optionally under a wrapper such as unshare)."""
    return subprocess.run([*prefix, sys.executable, "-c", ENTRY, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def assert_one_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit and exactly one stderr line `ling-jax: error: ...` holding every needle."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("ling-jax: error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_message_one_line(message: str, *needles: str) -> None:
    """An exception message fit for one terminal line that names every needle."""
    assert "\n" not in message and len(message) < 400, message
    for needle in needles:
        assert needle in message, (needle, message)


def flip_bytes(path: pathlib.Path, start: int, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: pathlib.Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def largest_file(directory: pathlib.Path) -> pathlib.Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
