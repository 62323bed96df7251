"""The RL update: loss value by hand, the objective rises, expert biases follow the counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ling_jax.model.moe import ExpertBias
from ling_jax.rl.rollout import response_mask, sequence_layout
from ling_jax.rl.update import UpdateConfig, rl_updates, score_fn
from ling_jax.train.balancing import update_expert_bias
from ling_jax.train.optimizer import make_optimizer
from ling_jax.train.schedules import make_schedule
from tests.rl.rl_fixtures import small_model

PROMPT, SLOTS, G = 6, 8, 2


@pytest.fixture(scope="module")
def setup():
    model = small_model(seed=11)
    graphdef, params, biases = nnx.split(model, nnx.Param, ExpertBias)
    params, biases = params.to_pure_dict(), biases.to_pure_dict()
    rng = np.random.default_rng(0)
    n = 2 * G
    prompt_lengths = np.array([6, 6, 3, 3], np.int32)
    prompt_ids = rng.integers(3, 256, size=(n, PROMPT)).astype(np.int32)
    prompt_ids[2:, :3] = 2  # left padding of prompt 2
    lengths = np.array([8, 3, 5, 1], np.int32)
    response = rng.integers(3, 256, size=(n, SLOTS)).astype(np.int32)
    response[~response_mask(lengths, SLOTS)] = 2
    batch = sequence_layout(prompt_ids, prompt_lengths, response, lengths)
    batch.update(response=response, mask=response_mask(lengths, SLOTS),
                 advantages=np.array([1.0, -1.0, -0.5, 0.5], np.float32),
                 sentence_ids=np.where(response_mask(lengths, SLOTS), 0, -1).astype(np.int32))
    batch = jax.tree.map(jnp.asarray, batch)
    score = score_fn(graphdef, PROMPT, 1.0)
    batch["logp_old"] = score(params, biases, batch)[0]
    return graphdef, params, biases, batch, score


@pytest.fixture(scope="module")
def run(setup):
    """One update per objective, compiled once and shared by the tests (memoised)."""
    done = {}

    def get(name):
        if name not in done:
            done[name] = _run(setup, name)
        return done[name]

    return get


def _run(setup, name):
    graphdef, params, biases, batch, _ = setup
    optimizer = make_optimizer({"weight_decay": 0.0},
                               make_schedule({"kind": "constant", "peak_lr": 1e-3}))
    uc = UpdateConfig(name, (), 1.0, PROMPT, 1e-2, 2, 0.0)
    state = {"params": params, "biases": biases, "opt_state": optimizer.init(params),
             "step": jnp.zeros((), jnp.int32)}
    fn = jax.jit(functools.partial(rl_updates, graphdef=graphdef, optimizer=optimizer, uc=uc))
    return fn(state, batch, jnp.arange(4, dtype=jnp.int32)[None])


@pytest.mark.parametrize("name", ["grpo", "lpo", "gspo"])
def test_update_loss_by_hand_and_objective_rises(setup, run, name):
    graphdef, params, biases, batch, score = setup
    state, metrics = run(name)
    adv = np.asarray(batch["advantages"], np.float64)
    lengths = np.asarray(batch["mask"]).sum(1)
    # At the sampling policy every ratio is 1: -J is -(token- or sequence-) mean advantage.
    want = -(adv * lengths).sum() / lengths.sum() if name != "gspo" else -adv.mean()
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-6)
    assert float(metrics["clip_fraction"]) == 0.0
    np.testing.assert_allclose(float(metrics["mean_ratio"]), 1.0, rtol=1e-6)
    # One small step raises sum_i A_i sum_t log pi (first order: the gradient's direction).
    mask = np.asarray(batch["mask"])
    before = np.asarray(batch["logp_old"])
    after = np.asarray(score(state["params"], state["biases"], batch)[0])
    weight = adv[:, None] * mask / (lengths[:, None] if name == "gspo" else 1.0)
    assert (weight * (after - before)).sum() > 0
    assert int(state["step"]) == 1


def test_expert_biases_follow_the_update_counts(setup, run):
    _, _, biases, _, _ = setup
    state, metrics = run("lpo")
    counts = np.asarray(metrics["expert_counts"])
    assert counts.shape == (3, 8)  # 2 MoE-stack layers + 1 MTP layer
    want = update_expert_bias(biases["moe_layers"]["mlp"]["expert_bias"], counts[:2], 1e-2)
    np.testing.assert_allclose(state["biases"]["moe_layers"]["mlp"]["expert_bias"], want)
    want_mtp = update_expert_bias(biases["mtp_layers"][0]["block"]["mlp"]["expert_bias"],
                                  counts[2], 1e-2)
    np.testing.assert_allclose(state["biases"]["mtp_layers"][0]["block"]["mlp"]["expert_bias"],
                               want_mtp)
    # Counts cover exactly the real tokens (prompt + response) times top-k, per layer.
    real = int(np.asarray(setup[3]["segment_ids"]).sum())
    np.testing.assert_array_equal(counts.sum(1), real * 2)
