"""The rl phase kind in the train loop: metrics, Evo-CoT stages, exact resume, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.rl.phase import RLPhase
from ling_jax.train.experiment import ExperimentError, validate_experiment
from ling_jax.train.loop import init_state, run_experiment
from ling_jax.train.metrics_log import read_metrics
from ling_jax.train.phases import PhaseContext
from ling_jax.train.tokenizer_setup import build_tokenizer
from tests.rl.rl_fixtures import rl_experiment

TIMING = ("step_time", "tokens_per_sec", "mfu", "time_rollout", "time_update")


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
    # The decoder's log-probs and the training forward's agree (fp32, same params).
    assert all(r["logp_gap"] < 1e-4 for r in rows)
    # The first update of a step sees ratio 1 exactly; entropy of a random model is high.
    assert rows[0]["entropy"] > 1.0
    assert [r.get("heldout_rl_steps") for r in rows] == [0, None, 2, None]
    assert len(rows[0]["heldout_correct"]) == 8 and "heldout_accuracy_end" in rows[-1]
    assert int(result.state["step"]) == 6
    assert (workdir / "phase_rl.png").stat().st_size > 1000


@pytest.mark.slow
def test_rl_resume_in_process_is_exact(full_run, tmp_path):
    """Stop after RL step 2 (checkpoint every RL step), resume: every RL metric matches bitwise."""
    full_dir, _ = full_run
    cfg = rl_experiment()
    cfg.phases.rl.checkpoint_every = 1
    stopped = run_experiment(cfg, tmp_path, max_steps=4)
    assert stopped.preempted and stopped.global_step == 4
    run_experiment(cfg, tmp_path)
    want, got = _rl_records(full_dir), _rl_records(tmp_path)
    assert len(got) == len(want) == 4
    for a, b in zip(want, got, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == \
               {k: v for k, v in b.items() if k not in TIMING}


def _runner(cfg, name, workdir):
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, workdir)
    ctx = PhaseContext(cfg, tokenizer, phase_index=1, start_step=0)
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
