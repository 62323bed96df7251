"""The rl phase kind in the train loop: metrics, Evo-CoT stages, exact resume, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.rl.phase import RLPhase, with_hyperparams
from ling_jax.train.experiment import ExperimentError, validate_experiment
from ling_jax.train.loop import init_state, run_experiment
from ling_jax.train.metrics_log import read_metrics
from ling_jax.train.optimizer import make_optimizer
from ling_jax.train.phases import PhaseContext
from ling_jax.train.schedules import make_schedule
from ling_jax.train.tokenizer_setup import build_tokenizer
from tests.rl.rl_fixtures import rl_experiment

# Wall-clock measurements differ between any two runs; everything else must match bitwise.
TIMING = ("step_time", "tokens_per_sec", "mfu", "time_rollout", "time_update", "time_data",
          "time_generate", "generate_share",
          "time_step", "time_checkpoint")


def _rl_records(workdir):
    return [r for r in read_metrics(workdir) if r["phase"] == "rl"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rl_full")
    cfg = rl_experiment()
    cfg.phases.rl.checkpoint_every = 1
    result = run_experiment(cfg, workdir)
    return workdir, result


@pytest.mark.slow
def test_rl_phase_logs_metrics_and_follows_stages(full_run):
    workdir, result = full_run
    rows = _rl_records(workdir)
    assert [r["phase_step"] for r in rows] == [1, 2, 3, 4] and result.global_step == 6
    for key in ("reward", "accuracy", "response_length", "clip_fraction", "kl_old", "entropy",
                "loss", "lr", "grad_norm", "logp_gap", "finished_fraction"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert [r["stage"] for r in rows] == [0, 0, 1, 1]
    assert [r["max_response_tokens"] for r in rows] == [16, 16, 24, 24]
    assert [r["length_alpha"] for r in rows] == [0.2, 0.2, 0.1, 0.1]
    assert all(r["response_length"] <= r["max_response_tokens"] for r in rows)
    # Generation time is part of the rollout time and of the step (share in (0, 1)).
    assert all(0 < r["time_generate"] <= r["time_rollout"] for r in rows)
    assert all(0 < r["generate_share"] < 1 for r in rows)
    # The decoder's log-probs and the training forward's agree (fp32, same params).
    assert all(r["logp_gap"] < 1e-4 for r in rows)
    # The first update of a step sees ratio 1 exactly; entropy of a random model is high.
    assert rows[0]["entropy"] > 1.0
    assert [r.get("heldout_rl_steps") for r in rows] == [0, None, 2, None]
    assert len(rows[0]["heldout_correct"]) == 8 and "heldout_accuracy_end" in rows[-1]
    assert np.mean(rows[0]["heldout_response_tokens"]) == rows[0]["heldout_tokens"]
    assert np.mean(rows[-1]["heldout_response_tokens_end"]) == rows[-1]["heldout_tokens_end"]
    assert int(result.state["step"]) == 6
    assert (workdir / "phase_rl.png").stat().st_size > 1000


@pytest.mark.slow
def test_rl_resume_in_process_is_exact(full_run, tmp_path):
    """Stop after RL step 2 (checkpoint every RL step), resume: every RL metric matches bitwise."""
    full_dir, _ = full_run
    cfg = rl_experiment()
    cfg.phases.rl.checkpoint_every = 1
    stopped = run_experiment(cfg, tmp_path, max_steps=4)
    assert stopped.stop_reason == "max_steps" and stopped.global_step == 4
    run_experiment(cfg, tmp_path)
    want, got = _rl_records(full_dir), _rl_records(tmp_path)
    assert len(got) == len(want) == 4
    for a, b in zip(want, got, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == \
               {k: v for k, v in b.items() if k not in TIMING}


def _runner(cfg, name, workdir, trace_context=None):
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, workdir)
    ctx = PhaseContext(cfg, tokenizer, phase_index=1, start_step=0, trace_context=trace_context)
    ctx.workdir = workdir  # the loop is asked to pass it (the reference policy lives there)
    return RLPhase(ctx, name, cfg.phases[name])


@pytest.mark.slow
def test_kl_reference_policy_survives_a_restart(tmp_path):
    """kl_beta > 0: the phase-start policy is saved under the workdir; a new runner resumed at
    step 1 reproduces step 2 exactly, including the KL to the reference."""
    cfg = rl_experiment(kl_beta=0.05)
    first = _runner(cfg, "rl", tmp_path)
    state = init_state(cfg, first.optimizer)
    copy = lambda s: jax.tree.map(jnp.copy, s)
    state, _ = first.step(state)
    after_one = copy(state)
    _, want = first.step(state)
    assert (tmp_path / "rl_reference_rl").is_dir()
    assert want["kl"] > 0 and np.isfinite(want["kl"])
    second = _runner(cfg, "rl", tmp_path)
    second.set_data_state(first.data_state() | {"rl_step": 1})
    _, got = second.step(after_one)
    for key, value in want.items():
        if key in TIMING:
            continue
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


@pytest.mark.slow
def test_scoring_and_updates_trace_under_the_plan_context(tmp_path):
    """The loop's trace_context (a plan's mesh + EP/CP settings) wraps log π_old and the updates,
    not sampling (decode runs with the sequence whole)."""
    import contextlib

    from ling_jax.ops.attention_context import active

    entered = []

    @contextlib.contextmanager
    def trace_context():
        entered.append(active())  # no context axis here: None, and sampling never enters
        yield

    cfg = rl_experiment()
    runner = _runner(cfg, "rl", tmp_path, trace_context)
    runner.step(init_state(cfg, runner.optimizer))
    assert entered == [None, None]  # scoring, then the K updates


def _set(cfg, path, value):
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def test_validation_names_the_field():
    cases = [
        (("phases", "rl", "rl", "objective"), "ppo", "phases.rl.rl.objective"),
        (("phases", "rl", "rl", "minibatches"), 3, "phases.rl.rl.minibatches"),
        (("phases", "rl", "rl", "group_size"), 1, "phases.rl.rl.group_size"),
        (("phases", "rl", "rl", "max_prompt_tokens"), 72, "phases.rl.seq_len"),
        (("phases", "rl", "rl", "reward_weights"), {"speed": 1.0}, "reward_weights"),
        (("phases", "rl", "rl", "kl_beta"), -1.0, "phases.rl.rl.kl_beta"),
        (("phases", "rl", "microbatches"), 2, "phases.rl.microbatches"),
        (("phases", "rl", "rl", "colour"), 1, r"unknown field\(s\) \['colour'\]"),
        (("phases", "rl", "rl", "stages"),
         [dict(steps=0, difficulty=1, max_response_tokens=40, length_alpha=0.1)],
         r"stages\[0\].max_response_tokens"),
        (("phases", "rl", "rl", "stages"),
         [dict(steps=0, difficulty=9, max_response_tokens=4, length_alpha=0.1)],
         r"stages\[0\].difficulty"),
        (("phases", "rl", "rl", "stages"),
         [dict(steps=0, difficulty=1, max_response_tokens=4),
          dict(steps=0, difficulty=2, max_response_tokens=4)], r"stages\[0\].steps"),
        (("phases", "rl", "data", "sources", "more"), {"kind": "builtin_arithmetic"},
         "phases.rl.data.sources"),
        (("phases", "rl", "rl", "optimizer"), {"mu_dtype": "float32"}, "phases.rl.rl.optimizer"),
    ]
    for path, value, message in cases:
        cfg = rl_experiment()
        _set(cfg, path, value)
        with pytest.raises(ExperimentError, match=message):
            validate_experiment(cfg)
    validate_experiment(rl_experiment())


def test_kl_without_workdir_is_refused(tmp_path):
    cfg = rl_experiment(kl_beta=0.1)
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, tmp_path)
    ctx = PhaseContext(cfg, tokenizer, phase_index=1, start_step=0)
    ctx.workdir = None
    with pytest.raises(ValueError, match="kl_beta > 0 needs PhaseContext.workdir"):
        RLPhase(ctx, "rl", cfg.phases.rl)


def test_with_hyperparams_makes_a_carried_state_step_with_the_new_betas():
    """A state built with b2=0.95 and one update behind it, given b2=0.999 and eps=1e-6: the next
    update equals AdamW written out in float64 NumPy with the carried moments and the new values."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
    grads = [{"w": jnp.asarray(0.01 * rng.normal(size=(3, 4)), jnp.float32)} for _ in range(2)]
    lr, wd = 1e-2, 0.1
    cfg = {"b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": wd, "max_grad_norm": None}
    schedule = make_schedule({"kind": "constant", "peak_lr": lr})
    old = make_optimizer(cfg, schedule)
    state = old.init(params)
    _, state = old.update(grads[0], state, params)
    carried = with_hyperparams(state, {"b2": 0.999, "eps": 1e-6})
    new = make_optimizer({**cfg, "b2": 0.999, "eps": 1e-6}, schedule)
    got, _ = new.update(grads[1], carried, params)

    g0, g1 = (np.asarray(g["w"], np.float64) for g in grads)
    w = np.asarray(params["w"], np.float64)
    mu = 0.1 * g0
    nu = 0.05 * g0**2  # the first update used b2 = 0.95
    mu, nu = 0.9 * mu + 0.1 * g1, 0.999 * nu + 0.001 * g1**2
    mu_hat, nu_hat = mu / (1 - 0.9**2), nu / (1 - 0.999**2)
    want = -lr * (mu_hat / (np.sqrt(nu_hat) + 1e-6) + wd * w)
    # optax computes 1 - b2**t in float32: at b2 = 0.999, t = 2 that alone is ~3e-5 relative.
    np.testing.assert_allclose(np.asarray(got["w"], np.float64), want, rtol=1e-4, atol=1e-8)
    # Without the override the carried state would still step with b2 = 0.95.
    stale, _ = new.update(grads[1], state, params)
    assert not np.allclose(np.asarray(stale["w"]), np.asarray(got["w"]), rtol=1e-3)


def test_phase_start_optimizer_state_and_data_state(tmp_path):
    """reset_optimizer=False keeps the moments and writes rl.optimizer into the state; the
    held-out results of the phase start travel in the data state."""
    cfg = rl_experiment()
    cfg.phases.rl.rl.reset_optimizer = False
    cfg.phases.rl.rl.optimizer = {"b2": 0.999}
    runner = _runner(cfg, "rl", tmp_path)
    optimizer = make_optimizer(cfg.optimizer, make_schedule({"kind": "constant", "peak_lr": 1e-3}))
    params = {"w": jnp.ones((3, 4))}  # the state layout is what matters, not the model
    state = {"params": params, "opt_state": optimizer.init(params)}
    grads = {"w": jax.random.normal(jax.random.key(0), (3, 4))}
    state["opt_state"] = optimizer.update(grads, state["opt_state"], params)[1]
    opt_state = runner._phase_start_opt_state(state)
    inject = opt_state[1]
    assert float(inject.hyperparams["b2"]) == pytest.approx(0.999)
    assert float(inject.hyperparams["b1"]) == pytest.approx(0.9)
    assert int(inject.count) == 1  # the carried update count, moments below are non-zero
    for a, b in zip(jax.tree.leaves(inject.inner_state), jax.tree.leaves(state["opt_state"][1].inner_state),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    runner.cursor, runner.heldout_start, runner.heldout_tokens_start = 3, [1, 0, 1], 17.5
    other = _runner(cfg, "rl", tmp_path)
    other.set_data_state(runner.data_state())
    assert (other.cursor, other.heldout_start, other.heldout_tokens_start) == (3, [1, 0, 1], 17.5)
    other.set_data_state({"rl_step": 2})  # checkpoints written before the field existed
    assert (other.cursor, other.heldout_start) == (2, None)
