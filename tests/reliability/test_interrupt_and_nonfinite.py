"""End to end through `ling-jax train`: Ctrl-C saves and exits 130 without a traceback, SIGTERM
saves and exits 75; a run whose learning rate is inf then stops with exit 3 and one line naming
the step and the likely cause, and the last good checkpoint stays intact, finite and restorable."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.reliability.full_disk import progress_free
from tests.reliability.hostile import ENTRY, ENV, REPO, cli

_CONFIG = """
from tests.train.experiment_fixtures import small_experiment

def get_config():
    return small_experiment(pretrain_steps=100_000, midtrain_steps=3, every=100_000)
"""


def _digest(step_dir) -> dict[str, str]:
    return {str(p.relative_to(step_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(step_dir.rglob("*")) if p.is_file()}


def _host(leaf) -> np.ndarray:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)


def _restore(config, workdir, step):
    import importlib.util

    from ling_jax.train import resume
    from ling_jax.train.phases import PhaseContext, make_phase_optimizer
    from ling_jax.train.state import init_state

    spec = importlib.util.spec_from_file_location("interrupt_cfg", config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    optimizer = make_phase_optimizer(PhaseContext(cfg, None, 0, 0), cfg.phases.pretrain)
    abstract = jax.eval_shape(lambda: init_state(cfg, optimizer))
    store = resume.open_store(cfg, workdir)
    try:
        assert store.verify(step) is None
        return store.restore(step, abstract_state=abstract)[0]
    finally:
        store.close()


def _signal_after_steps(config, workdir, sig: int, more_steps: int) -> tuple[int, str, str]:
    """`ling-jax train` sent `sig` once `more_steps` new metrics lines exist: (rc, out, err)."""
    metrics = workdir / "metrics.jsonl"
    start = metrics.read_text().count("\n") if metrics.exists() else 0
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "train", "--config", str(config),
                             "--workdir", str(workdir), "--sample_tokens=0"], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (
            metrics.exists() and metrics.read_text().count("\n") >= start + more_steps):
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def _checkpoints(workdir) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir())


@pytest.mark.slow
def test_ctrl_c_and_sigterm_save_then_nan_training_stops_with_3(tmp_path):
    config, workdir = tmp_path / "small.py", tmp_path / "run"
    config.write_text(_CONFIG)
    metrics = workdir / "metrics.jsonl"
    # Ctrl-C: saves, exits 130, prints no traceback (no periodic checkpoint is ever due).
    rc, stdout, stderr = _signal_after_steps(config, workdir, signal.SIGINT, 2)
    assert rc == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert progress_free(stderr) == [], stderr[-3000:]
    assert "interrupted (checkpoint saved; rerun to resume)" in stdout
    names = _checkpoints(workdir)
    assert len(names) == 1 and names[0].isdigit(), names  # no empty to_delete/ either
    first = int(names[0])
    assert first == metrics.read_text().count("\n") >= 2
    # SIGTERM (preemption): resumes from it, saves again, exits 75 for the scheduler to requeue.
    rc, stdout, stderr = _signal_after_steps(config, workdir, signal.SIGTERM, 1)
    assert rc == 75, stderr[-3000:]
    assert "Traceback" not in stderr and progress_free(stderr) == [], stderr[-3000:]
    assert f"resuming from step {first}" in stdout and "preempted (checkpoint saved" in stdout
    step = metrics.read_text().count("\n")
    assert step > first and _checkpoints(workdir) == sorted([str(first), str(step)])
    good = _restore(config, workdir, step)
    before = _digest(workdir / "checkpoints" / str(step))
    # lr = inf: every update is skipped, the run stops after nonfinite_limit (3) in a row.
    result = cli("train", "--config", config, "--workdir", workdir, "--sample_tokens=0",
                 "--config.phases.pretrain.lr.peak_lr=inf", timeout=900)
    assert result.returncode == 3, result.stderr[-3000:]
    lines = progress_free(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"ling-jax: error: step {step + 3} (pretrain): the update (lr inf) "
                               "not finite for 3 steps in a row"), lines[0]
    assert "learning rate" in lines[0] and f"the last checkpoint is step {step}" in lines[0]
    # Nothing non-finite saved, nothing good deleted by retention, the newest one untouched.
    assert _checkpoints(workdir) == sorted([str(first), str(step)])
    assert _digest(workdir / "checkpoints" / str(step)) == before
    again = _restore(config, workdir, step)
    for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(again), strict=True):
        a, b = _host(a), _host(b)
        assert np.array_equal(a, b)
        if np.issubdtype(a.dtype, np.floating):
            assert np.isfinite(a).all()
