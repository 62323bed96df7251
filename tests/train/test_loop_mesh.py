"""The loop builds the mesh from the experiment's `mesh` block: sharded state, validation before
compile, and resume onto a different mesh (or one device) with the uninterrupted run's losses."""

import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ling_jax.parallel.mesh import MeshError
from ling_jax.train.checkpoint import CheckpointStore
from ling_jax.train.loop import phases_to_run, run_experiment
from ling_jax.train.metrics_log import read_metrics
from tests.parallel.helpers import rel, small_cfg

REPO = pathlib.Path(__file__).resolve().parents[2]
MESH_A = dict(data=2, fsdp=2, expert=2)
KEYS = ("loss", "lm_loss", "mtp_loss", "z_loss", "grad_norm")


def _cfg(mesh):
    cfg = small_cfg(mesh, backend="ep_all_to_all", vocab=512)
    cfg.phases.pretrain.steps = 4
    cfg.checkpoint.every_steps = 2
    cfg.checkpoint.keep = 4
    return cfg


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """Four uninterrupted steps on data2×fsdp2×expert2 (checkpoints at steps 2 and 4)."""
    workdir = tmp_path_factory.mktemp("mesh_a")
    return workdir, run_experiment(_cfg(MESH_A), workdir)


def _resume_from_step_2(run_a, tmp_path, mesh):
    """The run of mesh A as it was after saving step 2, resumed to the end with `mesh`."""
    src, _ = run_a
    workdir = tmp_path / "resumed"
    shutil.copytree(src, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")  # step 2 becomes the newest checkpoint
    with CheckpointStore(workdir / "checkpoints") as store:
        assert store.latest_step() == 2
    result = run_experiment(_cfg(mesh), workdir)
    return result, read_metrics(src), read_metrics(workdir)


@pytest.mark.slow
def test_loop_shards_state_on_the_config_mesh(run_a):
    _, result = run_a
    plan = result.plan
    assert plan is not None and dict(plan.mesh.shape) == {**dict.fromkeys(plan.mesh.shape, 1),
                                                           **MESH_A}
    moe = result.state["params"]["moe_layers"]["mlp"]
    want = plan.state["params"]["moe_layers"]["mlp"]["gate_proj"]
    assert moe["gate_proj"].sharding == want and "expert" in str(want.spec)
    moments = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
        result.state["opt_state"])[0]
        if jax.tree_util.keystr(path).endswith("['moe_layers']['mlp']['gate_proj']")]
    assert len(moments) == 2 and all(m.sharding == want for m in moments)  # Adam mu, nu
    bias = result.state["biases"]["moe_layers"]["mlp"]["expert_bias"]
    assert bias.sharding == plan.state["biases"]["moe_layers"]["mlp"]["expert_bias"]
    records = read_metrics(result.workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_b", [dict(fsdp=4, expert=2), None], ids=["fsdp4_expert2", "one_device"])
def test_resume_on_another_mesh_matches_the_uninterrupted_run(run_a, tmp_path, mesh_b):
    result, want, got = _resume_from_step_2(run_a, tmp_path, mesh_b)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert got[:2] == want[:2]  # the lines before the checkpoint are kept as written
    for a, b in zip(want[2:], got[2:], strict=True):
        for key in KEYS:
            assert rel(a[key], b[key]) <= 1e-5, (key, a["step"], a[key], b[key])
        assert a["expert_counts"] == b["expert_counts"]
    if mesh_b is None:
        assert result.plan is None
        leaf = result.state["params"]["embed"]
        assert leaf.sharding.device_set == {jax.devices()[0]}
    else:
        assert dict(result.plan.mesh.shape)["fsdp"] == 4


def test_mesh_errors_come_before_anything_is_built(tmp_path):
    cases = [(dict(data=16), {}, "uses 16 devices but 8 are available"),
             (dict(expert=8), {"num_experts": 12}, "mesh.expert: model.num_experts=12"),
             (dict(data=2, tensor=4), {}, "mesh.tensor: model.num_key_value_heads=2"),
             (dict(data=8), {}, "phases.pretrain.batch_size: 8 is not divisible"),  # 8 shards × 2
             (dict(data=8, spare=1), {}, "mesh: unknown field")]
    for mesh, model, message in cases:
        cfg = small_cfg(mesh)
        cfg.model.update(model)
        cfg.phases.pretrain.microbatches = 2
        t0 = time.process_time()  # CPU time (a loaded machine's wall clock says nothing here)
        with pytest.raises(MeshError, match=message):
            run_experiment(cfg, tmp_path / "run")
        assert time.process_time() - t0 < 5  # validation only: nothing traced or compiled
        assert not (tmp_path / "run").exists()


def test_only_the_phases_that_will_run_are_validated(tmp_path):
    from tests.train.experiment_fixtures import small_experiment

    cfg = small_experiment()
    cfg.mesh = dict(data=2, expert=4, rules="fsdp")  # 2 batch shards
    cfg.phases.midtrain.batch_size = 5
    with pytest.raises(MeshError, match="phases.midtrain.batch_size: 5 is not divisible"):
        run_experiment(cfg, tmp_path / "all")
    names, starts = ["pretrain", "midtrain"], [0, 4, 7]
    assert phases_to_run(names, starts, 0, 4) == ["pretrain"]  # max_steps=4 ends in pretrain
    assert phases_to_run(names, starts, 0, 5) == names
    assert phases_to_run(names, starts, 1, None) == ["midtrain"]  # resumed in midtrain
    assert phases_to_run(names, starts, 2, None) == []  # finished run


def test_cli_reports_a_mesh_that_does_not_fit_in_one_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    out = subprocess.run(
        [sys.executable, "-m", "ling_jax.cli.main", "train", "--config",
         str(REPO / "experiments" / "ling_mini_2_pretrain.py"), "--workdir", str(tmp_path / "w"),
         "--config.mesh.fsdp=8"],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("ling-jax: error: mesh: ") and "fsdp=8" in lines[-1], lines[-3:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_ep_dropped_tokens_reach_the_metrics(run_a, tmp_path):
    """Dropless (capacity_factor 0) logs 0; capacity factor 0.5 must drop rows, and logs them."""
    assert [r["ep_dropped_tokens"] for r in read_metrics(run_a[0])] == [0, 0, 0, 0]
    cfg = _cfg(dict(fsdp=4, expert=2, capacity_factor=0.5))
    run_experiment(cfg, tmp_path, max_steps=2)
    # Per device and MoE layer (2 + MTP): 16 tokens × 2 slots to 2 devices of capacity
    # ⌈0.5·16·2/2⌉ = 8 drop at least 16 rows; summed over the 8 token shards: >= 16·8·3.
    dropped = [r["ep_dropped_tokens"] for r in read_metrics(tmp_path)]
    assert len(dropped) == 2 and all(384 <= d <= 32 * 8 * 3 for d in dropped), dropped
