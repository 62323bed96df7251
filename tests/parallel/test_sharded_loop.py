"""The train loop with `shard_fn` from a ShardingPlan, and remat policies under a mesh."""

import jax
import numpy as np
import pytest

from ling_jax.parallel.sharding import plan_for_experiment
from ling_jax.train.loop import run_experiment
from ling_jax.train.metrics_log import read_metrics
from tests.parallel.helpers import rel, run_steps, small_cfg, step_parts

pytestmark = pytest.mark.slow


def test_run_experiment_with_shard_fn_matches_one_device(tmp_path):
    cfg = small_cfg(dict(data=2, expert=2, tensor=2), backend="ep_all_to_all", vocab=512)
    cfg.phases.pretrain.microbatches = 2
    _, _, abstract = step_parts(cfg)
    plan = plan_for_experiment(cfg, abstract)
    sharded = run_experiment(cfg, tmp_path / "sharded", shard_fn=plan.shard_fn, max_steps=2)
    run_experiment(small_cfg(vocab=512), tmp_path / "single", max_steps=2)
    a, b = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "sharded")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "lm_loss", "mtp_loss", "grad_norm"):
            assert rel(x[key], y[key]) <= 1e-5, key
    gate = sharded.state["params"]["moe_layers"]["mlp"]["gate_proj"]
    assert gate.sharding.spec == plan.state["params"]["moe_layers"]["mlp"]["gate_proj"].spec


@pytest.mark.parametrize("remat", ["full", "save_dots", "offload", "offload_layer_inputs"])
def test_remat_policies_under_the_mesh(remat):
    fn, make, _ = step_parts(small_cfg())
    state0 = make()
    _, want = run_steps(jax.jit(fn), state0, steps=1)
    cfg = small_cfg(dict(data=2, expert=2, tensor=2), backend="ep_all_to_all", remat=remat)
    fn2, _, abstract = step_parts(cfg)
    plan = plan_for_experiment(cfg, abstract)
    _, got = run_steps(plan.shard_fn(fn2), plan.place(jax.tree.map(np.asarray, state0)), steps=1)
    for key in ("loss", "grad_norm"):
        assert rel(want[0][key], got[0][key]) <= 1e-5, key
