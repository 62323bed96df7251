"""Train-state shardings: from logical axes, Adam moments mirror params, init directly sharded."""

import jax
import numpy as np
import pytest

from ling_jax.parallel.sharding import logical_axes_of, plan_for_experiment, state_shardings
from tests.parallel.helpers import small_cfg, step_parts


@pytest.fixture(scope="module")
def setup():
    cfg = small_cfg(dict(fsdp=4, expert=2))
    _, make, abstract = step_parts(cfg)
    return cfg, make, abstract, plan_for_experiment(cfg, abstract)


def test_stacked_layers_get_a_leading_layers_axis(setup):
    axes = logical_axes_of(setup[0].model)
    assert axes["params"][("moe_layers", "mlp", "gate_proj")] == ("layers", "expert", "embed", "mlp")
    assert axes["params"][("mtp_layers", 0, "block", "mlp", "gate_proj")] == ("expert", "embed", "mlp")
    assert axes["biases"][("moe_layers", "mlp", "expert_bias")] == ("layers", "expert")


def test_adam_moments_mirror_params_and_scalars_are_replicated(setup):
    plan = setup[3]
    params = plan.state["params"]
    opt_leaves = jax.tree_util.tree_flatten_with_path(plan.state["opt_state"])[0]
    mirrored = [s for p, s in opt_leaves if "gate_proj" in jax.tree_util.keystr(p)]
    assert len(mirrored) >= 4  # mu and nu of the MoE and MTP gate projections (+ shared experts)
    assert params["moe_layers"]["mlp"]["gate_proj"].spec in {s.spec for s in mirrored}
    counts = [s for p, s in opt_leaves if jax.tree_util.keystr(p).endswith(".count")]
    assert counts and all(s.spec == jax.sharding.PartitionSpec() for s in counts)


def test_init_builds_the_state_sharded(setup):
    _, make, abstract, plan = setup
    state = plan.init(make)
    want = jax.jit(make)()  # eager init differs from jitted by an ulp (fused normal sampling)
    for a, b, s in zip(jax.tree.leaves(want), jax.tree.leaves(state),
                       jax.tree.leaves(plan.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding.is_equivalent_to(s, np.ndim(a))
    sds = plan.abstract(abstract)
    assert jax.tree.leaves(sds)[0].sharding == jax.tree.leaves(plan.state)[0]


def test_state_from_another_model_is_rejected(setup):
    cfg, _, abstract, plan = setup
    bad = dict(abstract, params={**abstract["params"], "extra": abstract["params"]["embed"]})
    with pytest.raises(ValueError, match=r"state\['params'\]\['extra'\] is not a model variable"):
        state_shardings(plan.mesh, plan.rules, bad, cfg.model)
