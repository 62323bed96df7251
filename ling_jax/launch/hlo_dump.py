"""Compile a lowered program and read back its optimized HLO as text from XLA's dump.

libtpu cannot print some compiled TPU programs (`compiled.as_text()` fails a RET_CHECK on
async-update ops: ragged all-to-all, async collective permutes), but the same compiler writes the
optimized module to `xla_dump_to` when asked through compile options. Only the final module is
read; the dump directory (it also holds buffer assignments and memory-usage reports) is removed
afterwards unless the caller names one to keep (`ling-jax aot --dump_to DIR`).
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Any

# Dump only the module before/after optimization (no per-pass dumps), without op metadata.
_DUMP_OPTIONS = {"xla_dump_hlo_as_text": True, "xla_dump_disable_metadata": True}
_FINAL_SUFFIX = "after_optimizations.txt"  # TPU: .after_…, CPU: .cpu_after_…


def compile_with_hlo(lowered, keep_dir: str | None = None) -> tuple[Any, str | None]:
    """(compiled executable, optimized HLO text or None when the compiler wrote no dump).

    With `keep_dir` XLA dumps there and the files stay (optimized HLO, buffer assignment with live
    ranges at the peak, memory-usage report); otherwise into a temporary directory."""
    if keep_dir is not None:
        pathlib.Path(keep_dir).mkdir(parents=True, exist_ok=True)
        return _compile(lowered, keep_dir)
    with tempfile.TemporaryDirectory(prefix="ling_jax_hlo_") as tmp:
        return _compile(lowered, tmp)


def _compile(lowered, directory: str) -> tuple[Any, str | None]:
    compiled = lowered.compile(compiler_options={"xla_dump_to": directory, **_DUMP_OPTIONS})
    return compiled, _final_module(pathlib.Path(directory))


def _final_module(directory: pathlib.Path) -> str | None:
    """The largest after-optimizations module in the dump (the step; helpers are small)."""
    files = sorted(directory.glob("*" + _FINAL_SUFFIX), key=lambda p: p.stat().st_size)
    return files[-1].read_text() if files else None
