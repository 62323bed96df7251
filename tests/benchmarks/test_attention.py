"""Smoke test of benchmarks/attention.py at a tiny length (no timing asserts)."""

import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "attention.py"


def _run(*args: str) -> list[str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--lengths=96", "--dtypes=float32",
                          "--repeats=1", "--block=32", *args], capture_output=True, text=True,
                         env=env, check=True, timeout=300).stdout
    return [line for line in out.splitlines() if line.split()[:1] in (["reference"], ["tiled"])]


def test_prints_time_and_memory_per_backend():
    rows = _run()
    assert [r.split()[0] for r in rows] == ["reference", "tiled"]
    assert all(" ms " in r and r.rstrip().endswith("G") for r in rows), rows


def test_points_over_budget_are_reported_not_run():
    rows = _run("--budget_gb=1e-9", "--backends=reference")
    assert len(rows) == 1 and "out of memory: XLA plans" in rows[0], rows
