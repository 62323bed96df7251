"""Smoke tests of benchmarks/forward.py, decode.py and train_step.py on a tiny shape: each prints
our figure, the upstream PyTorch figure beside it and the ratio (no timing asserts).

The upstream side needs torch + transformers and ../shared/reference/ling-v2-upstream: without
them the script must say "upstream not available" (checked), and under CI=true the test fails."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
UPSTREAM = ROOT.parent / "shared" / "reference" / "ling-v2-upstream"
QUICK_PEAK = ("--peak_n=128", "--peak_repeats=3")


def _upstream_available() -> bool:
    return ((UPSTREAM / "modeling_bailing_moe_v2.py").is_file()
            and all(importlib.util.find_spec(m) for m in ("torch", "transformers")))


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "LING_JAX_MALLOC_TUNING": "0"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *QUICK_PEAK, *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _check_sides(out: str, what: str) -> None:
    assert "ling-jax" in out and "MFU" in out and "peak" in out and "median of 3" in out, out
    assert "cold first call" in out, out  # warm and cold timings both reported
    if _upstream_available():
        line = next(ln for ln in out.splitlines() if ln.startswith(what))
        assert "upstream" in line and "ratio" in line and "x (goal" in line, out
        assert any(ln.strip().startswith("upstream") for ln in out.splitlines()), out
        return
    assert "upstream not available" in out, out
    msg = f"upstream side not run: needs torch, transformers and {UPSTREAM}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def test_forward_prints_both_sides():
    out = _run("forward.py", "--model=tiny", "--batch=2", "--length=16", "--repeats=1")
    _check_sides(out, "forward:")


def test_decode_prints_both_sides():
    out = _run("decode.py", "--model=tiny", "--batch=2", "--prompt=4", "--new=3", "--repeats=1")
    assert "ms/token" in out, out
    _check_sides(out, "decode:")


def test_train_step_prints_both_sides():
    out = _run("train_step.py", "--models=tiny", "--shape=2,16", "--steps=1")
    _check_sides(out, "train step tiny:")
