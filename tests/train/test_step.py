"""The LM train step's non-finite guard: a step whose loss, gradient or update is not finite
leaves params, biases and optimizer state exactly as they were."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ling_jax.train.loop import init_state
from ling_jax.train.optimizer import make_optimizer
from ling_jax.train.phases import phase_graphdef
from ling_jax.train.schedules import make_schedule
from ling_jax.train.step import StepConfig, train_step
from tests.train.experiment_fixtures import small_experiment

B, T = 2, 16


@pytest.fixture(scope="module")
def setup():
    cfg = small_experiment()
    rng = np.random.default_rng(0)
    seg = np.ones((B, T), np.int32)
    batch = {"inputs": rng.integers(1, 2048, (B, T)).astype(np.int32),
             "targets": rng.integers(1, 2048, (B, T)).astype(np.int32),
             "loss_mask": np.ones((B, T), np.float32), "segment_ids": seg,
             "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}
    sc = StepConfig(microbatches=1, mtp_weight=0.3, z_coef=1e-3, bias_update_rate=1e-3,
                    num_mtp=cfg.model.num_nextn_predict_layers,
                    num_moe=cfg.model.num_hidden_layers - cfg.model.first_k_dense_replace)

    @functools.cache  # one compile per learning rate for the whole module
    def step_for(peak_lr):
        opt = make_optimizer(cfg.optimizer, make_schedule(dict(kind="wsm", peak_lr=peak_lr,
                                                                warmup_steps=0, total_steps=10)))
        fn = jax.jit(functools.partial(train_step, graphdef=phase_graphdef(cfg.model),
                                       optimizer=opt, sc=sc))
        return opt, fn

    return cfg, batch, step_for


def _same(a, b) -> bool:
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                            strict=True))


@pytest.mark.parametrize("fault", ["nan_data", "inf_lr"])
def test_nonfinite_step_is_not_applied(setup, fault):
    cfg, batch, step_for = setup
    opt, step = step_for(float("inf") if fault == "inf_lr" else 1e-3)
    state = init_state(cfg, opt)
    # One finite step first, so the optimizer moments are not zeros.
    good_opt, good_step = step_for(1e-3)
    state, metrics = good_step(jax.tree.map(jnp.copy, state), batch)
    assert float(metrics["nonfinite"]) == 0.0
    if fault == "nan_data":
        batch = dict(batch, loss_mask=batch["loss_mask"].copy())
        batch["loss_mask"][0, 3] = np.nan
    before = jax.tree.map(np.asarray, state)
    after, metrics = step(jax.tree.map(jnp.copy, state), batch)
    assert float(metrics["nonfinite"]) == 1.0
    if fault == "inf_lr":  # the lr of the attempted update, not of the state kept
        assert float(metrics["lr"]) == float("inf")
    for key in ("params", "biases", "opt_state"):
        assert _same(after[key], before[key]), key
    assert int(after["step"]) == int(before["step"]) + 1  # the step is counted, not applied


def test_finite_step_is_applied(setup):
    cfg, batch, step_for = setup
    opt, step = step_for(1e-3)
    state = init_state(cfg, opt)
    before = jax.tree.map(np.asarray, state)
    after, metrics = step(jax.tree.map(jnp.copy, state), batch)
    assert float(metrics["nonfinite"]) == 0.0 and np.isfinite(float(metrics["loss"]))
    assert not _same(after["params"], before["params"])
    assert isinstance(opt, optax.GradientTransformation)


def test_loss_over_token_chunks_equals_the_whole_logits_loss(setup):
    """model.loss_chunks=3 (T=16 is padded to 18) gives the loss, the MTP and z sums and every
    gradient of the whole-logits step within 1e-5 relative (fp32 tiny model with MTP)."""
    from ling_jax.train.step import _grads, _normalisers

    cfg, batch, _ = setup
    assert cfg.model.num_nextn_predict_layers >= 1
    sc = StepConfig(microbatches=1, mtp_weight=0.3, z_coef=1e-3, bias_update_rate=1e-3,
                    num_mtp=cfg.model.num_nextn_predict_layers,
                    num_moe=cfg.model.num_hidden_layers - cfg.model.first_k_dense_replace)
    state = init_state(cfg, make_optimizer(cfg.optimizer, make_schedule(dict(
        kind="wsm", peak_lr=1e-3, warmup_steps=0, total_steps=10))))

    def grads_with(chunks):
        model_cfg = cfg.model.copy_and_resolve_references()
        model_cfg.loss_chunks = chunks
        graphdef = phase_graphdef(model_cfg)
        fn = lambda params, biases, b: _grads(params, biases, b, _normalisers(b, sc.num_mtp),
                                              graphdef, sc)
        return jax.device_get(jax.jit(fn)(state["params"], state["biases"], batch))

    (loss1, aux1, g1), (loss3, aux3, g3) = grads_with(1), grads_with(3)
    rel = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                             / max(np.max(np.abs(np.asarray(a))), 1e-30))
    assert rel(loss1, loss3) <= 1e-5
    for key in ("lm_sum", "mtp_sums", "z_sum"):
        assert rel(aux1[key], aux3[key]) <= 1e-5, key
    paths = jax.tree_util.tree_flatten_with_path(g1)[0]
    for (path, a), b in zip(paths, jax.tree.leaves(g3), strict=True):
        assert rel(a, b) <= 1e-5, jax.tree_util.keystr(path)
