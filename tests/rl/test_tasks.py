"""RL tasks: code prompts scored through the rollout path, hostile completions included; config."""

import time

import numpy as np
import pytest

from ling_jax.data.code_tasks import code_task
from ling_jax.rl import rollout
from ling_jax.rl.config import rl_settings, validate_rl_phase
from ling_jax.rl.tasks import TASKS, get_task
from ling_jax.train.experiment import with_phase_defaults
from tests.rl.rl_fixtures import CharTokenizer, rl_phase_fields

TOK = CharTokenizer()
CODE = get_task("builtin_code")
HOSTILE = [
    "    while True:\n        pass\n",  # infinite loop
    "    import os\n    while True:\n        os.fork()\n",  # fork bomb
    "    import os\n    os.system('echo hi > /tmp/ling_jax_pwned')\n    return 0\n",
    "    print('x' * 10**7)\n    return [0] * 10**9\n",  # huge output, memory bomb
    "    import socket\n    socket.create_connection(('127.0.0.1', 22), 1)\n",
    "    open('/tmp/ling_jax_pwned', 'w').write('x')\n",
]


def _rollouts(texts):
    n = len(texts)
    lengths = np.array([len(TOK.encode(t)) for t in texts], np.int32)
    response = np.full((n, int(lengths.max())), TOK.pad_id, np.int32)
    for i, t in enumerate(texts):
        response[i, :lengths[i]] = TOK.encode(t)
    return rollout.Rollouts(np.zeros((n, 4), np.int32), np.full(n, 4, np.int32), response,
                            np.zeros(response.shape, np.float32), lengths, np.ones(n, bool), texts)


def test_hostile_completions_are_contained_and_the_step_continues():
    task = code_task(0, difficulty=1)
    texts = [task.completion, "    return (\n", *HOSTILE]
    group = len(texts)
    weights = {"code_syntax": 0.2, "code_function": 1.0, "code_aesthetics": 0.1, "length": 1.0}
    params = {"code_function": {"cpu_seconds": 1, "wall_seconds": 20.0, "workers": 2}}
    start = time.perf_counter()
    rewards, parts = rollout.score_rollouts(_rollouts(texts), [task], group, weights, params,
                                            length_alpha=0.1, task=CODE)
    assert time.perf_counter() - start < 60
    np.testing.assert_array_equal(parts["code_function"][0], [1] + [0] * (group - 1))
    np.testing.assert_array_equal(parts["code_syntax"][0], [1, 0] + [1] * len(HOSTILE))
    assert np.isfinite(rewards).all() and rewards[0, 0] == rewards.max()
    batch = rollout.training_batch(_rollouts(texts), rewards,
                                   np.zeros((group, max(len(t) for t in texts)), np.int32), 1e-6)
    assert np.isfinite(batch["advantages"]).all() and batch["advantages"][0] > 0
    import os
    assert not os.path.exists("/tmp/ling_jax_pwned")
    # The step's accuracy reads the same (cached) sandbox results.
    assert CODE.correct(texts, [task] * group, cpu_seconds=1, wall_seconds=20.0).tolist() == (
        [True] + [False] * (group - 1))
    # List arguments and values (jobs are keyed by their JSON) are judged like the rest.
    lists = next(t for t in (code_task(i, difficulty=2) for i in range(50))
                 if isinstance(t.args[0][0], list) and isinstance(t.expected[0], list))
    assert CODE.correct([lists.completion, "    return items\n"], [lists] * 2).tolist() == [
        True, False]


def _code_phase(**rl):
    fields = rl_phase_fields()
    fields["data"] = dict(sources=dict(code=dict(kind="builtin_code", split="train")))
    fields["rl"].pop("stages")
    fields["rl"].update(stages=[dict(steps=0, difficulty=(1, 2), max_response_tokens=16,
                                     length_alpha=0.1)], **rl)
    return with_phase_defaults(fields)


def test_code_phase_config_defaults_and_validation():
    phase = _code_phase()
    assert set(rl_settings(phase)["reward_weights"]) == {"code_syntax", "code_function",
                                                         "code_aesthetics", "length"}
    assert [s.difficulty for s in validate_rl_phase("code", phase, 4)] == [(1, 2)]
    with pytest.raises(ValueError, match="do not apply to builtin_code"):
        validate_rl_phase("code", _code_phase(reward_weights={"math_answer": 1.0}), 4)
    bad = _code_phase()
    bad.rl.stages = [dict(steps=0, difficulty=3, max_response_tokens=16, length_alpha=0.1)]
    with pytest.raises(ValueError, match=r"difficulty.*\[1, 2\]"):
        validate_rl_phase("code", bad, 4)
    with pytest.raises(ValueError, match="builtin_arithmetic"):
        get_task("builtin_python")
    assert sorted(TASKS) == ["builtin_arithmetic", "builtin_code"]


@pytest.mark.slow
def test_code_rl_phase_runs_in_the_loop_and_reports_tokens(tmp_path):
    """A pretrain step, then 2 code-RL steps of a small random model: every code reward is logged
    separately, the held-out pass@1 comes with mean response tokens, and the plot is written."""
    from ling_jax.train.loop import run_experiment
    from ling_jax.train.metrics_log import read_metrics
    from tests.rl.rl_fixtures import rl_experiment

    cfg = rl_experiment(pretrain_steps=1)
    cfg.phases.rl = _code_phase(eval_every=1, eval_problems=4,
                                reward_params={"code_function": {"workers": 2}})
    cfg.phases.rl.steps = 2
    run_experiment(cfg, tmp_path)
    rows = [r for r in read_metrics(tmp_path) if r["phase"] == "rl"]
    assert len(rows) == 2
    for key in ("reward_code_syntax", "reward_code_function", "reward_code_aesthetics",
                "reward_length", "heldout_tokens", "accuracy"):
        assert all(np.isfinite(r[key]) for r in rows), key
    # Greedy evaluation may use the whole response buffer: seq_len 72 - max_prompt_tokens 48.
    assert 0 < rows[0]["heldout_tokens"] <= 24 and "heldout_tokens_end" in rows[-1]
    assert (tmp_path / "phase_rl.png").stat().st_size > 1000
