"""The train loop: phases in order, exact resume, SIGTERM, and validation before compile."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ling_jax.train.experiment import ExperimentError, validate_experiment
from ling_jax.train.loop import run_experiment
from ling_jax.train.metrics_log import read_metrics
from tests.train.experiment_fixtures import small_experiment

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    result = run_experiment(small_experiment(), workdir)
    return workdir, result


def test_phases_run_in_order_and_loss_falls(full_run):
    workdir, result = full_run
    records = read_metrics(workdir)
    assert [r["phase"] for r in records] == ["pretrain"] * 4 + ["midtrain"] * 3
    assert [r["step"] for r in records] == list(range(1, 8))
    for key in ("loss", "lm_loss", "mtp_loss", "lr", "grad_norm", "tokens_per_sec", "mfu"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert records[3]["loss"] < records[0]["loss"]
    assert not result.preempted and result.global_step == 7
    assert (workdir / "phase_pretrain.png").stat().st_size > 1000
    assert int(result.state["step"]) == 7


def test_resume_in_process_is_exact(full_run, tmp_path):
    """Stop after step 3 (mid-phase, between checkpoints), resume, and match every loss bitwise."""
    full_dir, _ = full_run
    cfg = small_experiment()
    stopped = run_experiment(cfg, tmp_path, max_steps=3)
    assert stopped.stop_reason == "max_steps" and not stopped.preempted
    run_experiment(cfg, tmp_path)
    a = [r["loss"] for r in read_metrics(full_dir)]
    b = [r["loss"] for r in read_metrics(tmp_path)]
    assert a == b  # bitwise on CPU: same data order, same compiled steps


def test_validation_names_fields_before_compile():
    cases = [
        (("phases", "pretrain", "microbatches"), 3, "phases.pretrain.batch_size"),
        (("phases", "pretrain", "kind"), "dpo", "phases.pretrain.kind: 'dpo' is not one of"),
        (("phases", "pretrain", "seq_len"), 10**6, "phases.pretrain.seq_len"),
        (("phases", "midtrain", "lr", "kind"), "exp", "phases.midtrain.lr"),
        (("model", "num_experts"), 7, "num_experts"),
        (("phase_order",), ("pretrain", "sft"), "phase_order: names phase 'sft'"),
    ]
    for path, value, message in cases:
        cfg = small_experiment()
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ExperimentError, match=message):
            validate_experiment(cfg)
    cfg = small_experiment()
    cfg.phases.pretrain.data.sources.python.kind = "csv"
    with pytest.raises(ExperimentError, match="phases.pretrain.data.*csv"):
        validate_experiment(cfg)


_DRIVER = textwrap.dedent("""
    import os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, {repo!r})
    from ling_jax.train.loop import run_experiment
    from tests.train.experiment_fixtures import small_experiment
    cfg = small_experiment(pretrain_steps=6, midtrain_steps=4, every=1)
    result = run_experiment(cfg, sys.argv[1])
    print("PREEMPTED" if result.preempted else "DONE", result.global_step, flush=True)
""")


def _driver(tmp_path) -> pathlib.Path:
    path = tmp_path / "driver.py"
    path.write_text(_DRIVER.format(repo=str(REPO)))
    return path


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")


@pytest.mark.slow
def test_kill9_then_resume_reproduces_losses_bitwise(tmp_path):
    driver = _driver(tmp_path)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run([sys.executable, str(driver), str(ref_dir)], check=True, env=_env(),
                   capture_output=True, timeout=600)
    # Kill -9 twice at different moments (mid-step / mid-save), then let it finish.
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, str(driver), str(run_dir)], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 300
        start = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= start + 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = subprocess.run([sys.executable, str(driver), str(run_dir)], check=True, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert "DONE 10" in out.stdout
    ref = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(ref_dir)]
    got = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run_dir)]
    assert got == ref


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    driver = _driver(tmp_path)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(driver), str(run_dir)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and stdout.startswith("PREEMPTED")
    step = int(stdout.split()[1])
    assert step < 10
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == step
    meta = json.loads((run_dir / "experiment.json").read_text())
    assert meta["phase_order"] == ["pretrain", "midtrain"]


def test_merge_checkpoints_averages_the_last_two(full_run, tmp_path):
    from flax import nnx

    from ling_jax.interop.model_checkpoint import load_model
    from ling_jax.train.checkpoint import CheckpointStore
    from ling_jax.train.merge_run import load_experiment, merge_run_checkpoints, model_state

    workdir, result = full_run
    coeffs, steps, out = merge_run_checkpoints(workdir, out=tmp_path / "merged", steps=None,
                                               last_n=2, weights="uniform")
    assert coeffs == [0.5, 0.5] and len(steps) == 2
    import jax
    store = CheckpointStore(workdir / "checkpoints")
    abstract = jax.eval_shape(lambda: result.state)
    trees = [store.restore(s, abstract_state=abstract)[0] for s in steps]
    store.close()
    expected = jax.tree.map(lambda a, b: (np.asarray(a, np.float64) + np.asarray(b, np.float64)) / 2,
                            *[model_state(t["params"], t["biases"]) for t in trees])
    model, cfg = load_model(out)
    got = nnx.state(model).to_pure_dict()
    jax.tree.map(lambda g, e: np.testing.assert_allclose(np.asarray(g), e, rtol=1e-6, atol=1e-7),
                 got, expected)
    assert cfg.hidden_size == load_experiment(workdir).model.hidden_size


@pytest.mark.slow
def test_fp8_run_logs_the_numerics_monitor(tmp_path):
    cfg = small_experiment(pretrain_steps=2, midtrain_steps=1)
    cfg.model.fp8 = True
    cfg.fp8_monitor_every = 2
    run_experiment(cfg, tmp_path, max_steps=2)
    records = read_metrics(tmp_path)
    assert "fp8/min_cosine/input" not in records[0] or records[0]["step"] % 2 == 0
    monitored = records[1]
    cosines = {k: v for k, v in monitored.items() if k.startswith("fp8/min_cosine")}
    assert cosines and all(0.9 < v <= 1.0 + 1e-6 for v in cosines.values()), cosines
    assert all(np.isfinite(r["loss"]) for r in records)
