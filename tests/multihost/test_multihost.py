"""Real multi-process runs on localhost (gloo): N processes compute what one process computes.

Each job is `ling-jax train` started as separate processes with their own fake CPU devices; the
one-process run on the same data=4 mesh is the reference. Slow: every process compiles its steps.
"""

import json
import os
import signal
import time

import numpy as np
import pytest

from ling_jax.cli import local_cluster

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config", "tests/multihost/small_config.py", "--sample_tokens=0"]


def _train(workdir, processes, devices, *extra, timeout=900):
    results = local_cluster.run([*ARGS, f"--workdir={workdir}", *extra], processes, devices,
                                timeout=timeout, cwd=ROOT)
    for r in results:
        assert r.returncode == 0, f"process {r.process_id}: {r.stderr[-3000:]}"
    return results


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: (r["loss"], r["tokens"]) for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one") / "run"
    _train(workdir, 1, 4)
    return workdir


def _assert_same_curve(got, want, steps):
    for step in steps:
        (loss, tokens), (ref, ref_tokens) = got[step], want[step]
        assert tokens == ref_tokens, step  # the same rows: the same token counts
        # Not bitwise: the cross-process all-reduce sums in another order (measured ~1e-7).
        assert abs(loss - ref) <= 1e-5 * abs(ref), (step, loss, ref)


def test_two_processes_equal_one(one_process, tmp_path):
    from flax import nnx

    from ling_jax.interop.model_checkpoint import load_model

    workdir = tmp_path / "run"
    _train(workdir, 2, 2)
    want, got = _losses(one_process), _losses(workdir)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    _assert_same_curve(got, want, range(1, 7))
    # Both write final_model; the parameters agree.
    ref = nnx.state(load_model(one_process / "final_model")[0]).to_pure_dict()
    two = nnx.state(load_model(workdir / "final_model")[0]).to_pure_dict()
    import jax
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(two), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=1e-4, atol=1e-6)
    assert not (workdir / "final_model.partial").exists()


def test_two_processes_stopped_resume_on_one(one_process, tmp_path):
    """Stopped at --max_steps on 2 processes (mid-phase, data iterator inside the pretrain
    phase), resumed on 1: the same curve as the uninterrupted one-process run."""
    workdir = tmp_path / "run"
    _train(workdir, 2, 2, "--max_steps=2")
    _train(workdir, 1, 4)
    _assert_same_curve(_losses(workdir), _losses(one_process), range(1, 7))


def test_kill9_of_one_process_stops_the_others(tmp_path):
    workdir = tmp_path / "run"
    procs = local_cluster.start([*ARGS, f"--workdir={workdir}", "--heartbeat_timeout_s=15",
                                 "--config.phases.pretrain.steps=500"], 2, 2, cwd=ROOT)
    metrics, t0 = workdir / "metrics.jsonl", time.monotonic()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() - t0 < 600, "no progress"
        assert all(p.poll() is None for p in procs)
        time.sleep(0.2)
    os.kill(procs[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    results = local_cluster.wait(procs, timeout=120)
    survivor = results[0]
    assert survivor.returncode == 4, survivor.stderr[-2000:]
    assert survivor.seconds < 600 and time.monotonic() - killed < 90
    last = [line for line in survivor.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("ling-jax: error: lost process 1") and "Traceback" not in survivor.stderr
