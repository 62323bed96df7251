"""End to end through `ling-jax train`: Ctrl-C saves and exits 130 without a traceback; a run
whose learning rate is inf stops with exit 3 and one line naming the step and the likely cause,
and the last good checkpoint (the one Ctrl-C saved) stays intact, finite and restorable."""

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


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130_then_nan_training_stops_with_3(tmp_path):
    config, workdir = tmp_path / "small.py", tmp_path / "run"
    config.write_text(_CONFIG)
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "train", "--config", str(config),
                             "--workdir", str(workdir), "--sample_tokens=0"], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (
            metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert progress_free(stderr) == [], stderr[-3000:]
    assert "interrupted (checkpoint saved; rerun to resume)" in stdout
    names = [p.name for p in (workdir / "checkpoints").iterdir()]
    assert len(names) == 1 and names[0].isdigit(), names  # saved on Ctrl-C; no empty to_delete/
    step = int(names[0])
    assert step == len(metrics.read_text().splitlines()) >= 2
    good = _restore(config, workdir, step)
    before = _digest(workdir / "checkpoints" / str(step))

    result = cli("train", "--config", config, "--workdir", workdir, "--sample_tokens=0",
                 "--config.phases.pretrain.lr.peak_lr=inf", timeout=900)
    assert result.returncode == 3, result.stderr[-3000:]
    lines = progress_free(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    limit = 3  # experiment(nonfinite_limit=3)
    assert f"step {step + limit} (pretrain)" in lines[0], lines[0]
    assert "learning rate" in lines[0] and f"the last checkpoint is step {step}" in lines[0]
    names = [p.name for p in (workdir / "checkpoints").iterdir()]
    assert names == [str(step)]  # nothing non-finite saved, nothing good deleted, no to_delete/
    assert _digest(workdir / "checkpoints" / str(step)) == before
    again = _restore(config, workdir, step)
    for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(again), strict=True):
        a, b = _host(a), _host(b)
        assert np.array_equal(a, b)
        if np.issubdtype(a.dtype, np.floating):
            assert np.isfinite(a).all()
