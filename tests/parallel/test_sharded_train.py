"""The unchanged train step on 8 CPU devices equals the single-device run (fp32, rel ≤ 1e-5).

Checked per mesh over 3 steps: losses (LM, MTP, z), gradient norms, gradients at the first step,
expert counts (global over the sharded batch) and the expert biases they update, and every
parameter after the last step.
"""

import functools

import jax
import numpy as np
import pytest

from ling_jax.parallel.sharding import plan_for_experiment
from ling_jax.train import step as train_step_module
from tests.parallel.helpers import random_batch, rel, run_steps, small_cfg, step_parts

pytestmark = pytest.mark.slow

# name: (mesh block, MoE backend, train-step microbatches, layers (1 dense + MoE))
MESHES = {
    "data2_expert2_tensor2": (dict(data=2, expert=2, tensor=2), "ep_all_to_all", 2, 3),
    "fsdp4_expert2": (dict(fsdp=4, expert=2), "ep_all_to_all", 1, 3),
    "data2_expert2_tensor2_no_ep": (dict(data=2, expert=2, tensor=2, rules="ep_as_dp"),
                                    "blocked", 1, 3),
    # circular pipeline: 4 MoE layers = 2 stages × 2 repeats × 1 layer, 2 microbatches
    "data2_expert2_pipeline2": (dict(data=2, expert=2, pipeline=2, repeats=2,
                                     pipeline_microbatches=2), "ep_all_to_all", 1, 5),
}
METRICS = ("loss", "lm_loss", "mtp_loss", "z_loss", "grad_norm")


def _grads_fn(fn):
    """Gradients of the step's loss on a batch (the train step's own code path)."""
    kw = fn.keywords

    def grads(state, batch):
        norms = train_step_module._normalisers(batch, kw["sc"].num_mtp)
        return train_step_module._grads(state["params"], state["biases"], batch, norms,
                                        kw["graphdef"], kw["sc"])[2]

    return grads


@functools.cache
def _reference(layers: int):
    fn, make, _ = step_parts(small_cfg(layers=layers))
    state0 = make()
    grads = jax.device_get(jax.jit(_grads_fn(fn))(state0, random_batch(0)))
    state, metrics = run_steps(jax.jit(fn), state0)
    return state0, grads, state, metrics


@pytest.fixture(scope="module", params=list(MESHES))
def case(request):
    return MESHES[request.param]


@pytest.fixture(scope="module")
def reference(case):
    return _reference(case[3])


@pytest.fixture(scope="module")
def sharded(case, reference):
    mesh, backend, micro, layers = case
    cfg = small_cfg(mesh, backend=backend, microbatches=micro, layers=layers)
    fn, _, abstract = step_parts(cfg)
    plan = plan_for_experiment(cfg, abstract)
    state0 = plan.place(jax.tree.map(np.asarray, reference[0]))  # the step donates its input
    with plan.context():
        grads = jax.jit(_grads_fn(plan.prepare(fn)),
                        in_shardings=(plan.state, plan.batch))(state0, random_batch(0))
    state, metrics = run_steps(plan.shard_fn(fn), state0)
    return plan, jax.device_get(grads), state, metrics


def test_losses_and_grad_norms_match(reference, sharded):
    for want, got in zip(reference[3], sharded[3], strict=True):
        for key in METRICS:
            assert rel(want[key], got[key]) <= 1e-5, (key, want[key], got[key])
        np.testing.assert_array_equal(want["expert_counts"], got["expert_counts"])


def test_first_step_gradients_match(reference, sharded):
    want, got = reference[1], sharded[1]
    paths = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, a), b in zip(paths, jax.tree.leaves(got), strict=True):
        assert rel(a, b) <= 1e-5, jax.tree_util.keystr(path)


def test_params_and_expert_biases_match_after_three_steps(reference, sharded):
    want, got = reference[2], sharded[2]
    for part in ("params", "biases"):
        paths = jax.tree_util.tree_flatten_with_path(want[part])[0]
        for (path, a), b in zip(paths, jax.tree.leaves(got[part]), strict=True):
            assert rel(a, b) <= 1e-5, (part, jax.tree_util.keystr(path))
    # The biases moved (3 updates at rate 1e-2), MTP layer included.
    assert np.abs(got["biases"]["mtp_layers"][0]["block"]["mlp"]["expert_bias"]).max() > 0
    assert np.abs(got["biases"]["moe_layers"]["mlp"]["expert_bias"]).max() > 0
    assert int(got["step"]) == 3


def _mesh_axes(spec) -> set:
    return {a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)}


def test_state_is_sharded_as_planned(sharded):
    plan = sharded[0]
    gate = plan.state["params"]["moe_layers"]["mlp"]["gate_proj"]
    assert gate.spec[1] == "expert"  # [layers, expert, embed, mlp]
    opt = jax.tree.leaves(plan.state["opt_state"])
    assert sum("expert" in _mesh_axes(s.spec) for s in opt) >= 2  # Adam mu and nu follow params
