"""Real multi-process runs on localhost (gloo): N processes compute what one process computes.

Each job is `ling-jax train` started as separate processes with their own fake CPU devices; the
one-process run on the same data=4 mesh is the reference. Slow: every process compiles its steps.
"""

import json
import os
import signal
import subprocess
import sys
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


def _records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _losses(workdir):
    return {r["step"]: (r["loss"], r["tokens"]) for r in _records(workdir) if "loss" in r}


def _params(model_dir):
    from flax import nnx

    from ling_jax.interop.model_checkpoint import load_model

    return nnx.state(load_model(model_dir)[0]).to_pure_dict()


def _assert_close_trees(got, want):
    import jax

    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=1e-4, atol=1e-6)


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
    from ling_jax.train.merge_run import merge_run_checkpoints

    workdir = tmp_path / "run"
    _train(workdir, 2, 2)
    want, got = _losses(one_process), _losses(workdir)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    _assert_same_curve(got, want, range(1, 7))
    # Both write final_model; the parameters agree.
    _assert_close_trees(_params(workdir / "final_model"), _params(one_process / "final_model"))
    assert not (workdir / "final_model.partial").exists()
    # Checkpoints written by two processes merge (on one) like those written by one ...
    for run in (workdir, one_process):
        merge_run_checkpoints(run, out=run / "merged", steps=None, last_n=2, weights="uniform")
    _assert_close_trees(_params(workdir / "merged"), _params(one_process / "merged"))
    # ... and export to HF.
    export = subprocess.run([sys.executable, "-m", "ling_jax.cli.main", "export-hf",
                             f"--checkpoint={workdir / 'merged'}", f"--out={tmp_path / 'hf'}",
                             "--dtype=float32"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert export.returncode == 0, export.stderr[-2000:]
    assert (tmp_path / "hf" / "config.json").is_file()


def test_one_process_stopped_resumes_on_four(one_process, tmp_path):
    """1 → 4 processes: stopped at --max_steps on 1 × 4 devices, finished on 4 × 1 (steps 3-6
    run as four processes): the same curve as the uninterrupted one-process run."""
    workdir = tmp_path / "run"
    _train(workdir, 1, 4, "--max_steps=2")
    _train(workdir, 4, 1)
    _assert_same_curve(_losses(workdir), _losses(one_process), range(1, 7))


def test_sigterm_to_every_process_saves_once_and_resumes(one_process, tmp_path):
    """Preemption: SIGTERM to both processes → one coordinated checkpoint, exit 75 on both; the
    same command resumes to the uninterrupted run's curve."""
    workdir = tmp_path / "run"
    procs = local_cluster.start([*ARGS, f"--workdir={workdir}"], 2, 2, cwd=ROOT)
    _wait_for_steps(workdir, procs, 1)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    results = local_cluster.wait(procs, timeout=600)
    assert [r.returncode for r in results] == [75, 75], results[0].stderr[-2000:]
    assert all("Traceback" not in r.stderr for r in results)
    saved = sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())
    stopped_at = max(_losses(workdir))
    assert saved[-1] == stopped_at < 6  # the checkpoint of the step where both stopped
    _train(workdir, 2, 2)
    _assert_same_curve(_losses(workdir), _losses(one_process), range(1, 7))


def test_rl_two_processes_equal_one(tmp_path):
    """An rl phase on 2 processes × 2 devices: each process generates and scores its own groups;
    rewards, sampled tokens and losses equal the 1 × 4 run's."""
    args = ["--config", "tests/multihost/rl_config.py", "--sample_tokens=0"]
    runs = {}
    for processes, devices in ((1, 4), (2, 2)):
        workdir = tmp_path / f"{processes}x{devices}"
        results = local_cluster.run([*args, f"--workdir={workdir}"], processes, devices,
                                    timeout=1500, cwd=ROOT)
        for r in results:
            assert r.returncode == 0, f"process {r.process_id}: {r.stderr[-3000:]}"
        runs[processes] = [r for r in _records(workdir) if r["phase"] == "rl"]
    one, two = runs[1], runs[2]
    assert [r["step"] for r in one] == [r["step"] for r in two] and len(one) == 4
    for a, b in zip(one, two, strict=True):
        for key in ("tokens", "reward", "accuracy", "response_length", "expert_counts"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(abs(a["loss"]), 1e-3), a["step"]


def test_two_processes_stopped_resume_on_one(one_process, tmp_path):
    """Stopped at --max_steps on 2 processes (mid-phase, data iterator inside the pretrain
    phase), resumed on 1: the same curve as the uninterrupted one-process run."""
    workdir = tmp_path / "run"
    _train(workdir, 2, 2, "--max_steps=2")
    _train(workdir, 1, 4)
    _assert_same_curve(_losses(workdir), _losses(one_process), range(1, 7))


def _wait_for_steps(workdir, procs, steps: int) -> None:
    metrics, t0 = workdir / "metrics.jsonl", time.monotonic()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        assert time.monotonic() - t0 < 600, "no progress"
        assert all(p.poll() is None for p in procs)
        time.sleep(0.2)


def test_kill9_of_one_process_stops_the_others(tmp_path):
    workdir = tmp_path / "run"
    procs = local_cluster.start([*ARGS, f"--workdir={workdir}", "--heartbeat_timeout_s=15",
                                 "--config.phases.pretrain.steps=500"], 2, 2, cwd=ROOT)
    _wait_for_steps(workdir, procs, 2)
    os.kill(procs[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    results = local_cluster.wait(procs, timeout=120)
    survivor = results[0]
    assert survivor.returncode == 4, survivor.stderr[-2000:]
    assert survivor.seconds < 600 and time.monotonic() - killed < 90
    last = [line for line in survivor.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("ling-jax: error: lost process 1") and "Traceback" not in survivor.stderr
