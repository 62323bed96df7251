"""The embedded default (experiments/colab_tiny.py): its phases and their settings, checked without
training; the whole pipeline runs only shortened, and only in the slow suite."""

import os
import pathlib
import subprocess
import sys

import pytest

from ling_jax.rl.config import rl_settings, validate_rl_phase
from ling_jax.train.experiment import phase_names, phase_steps, validate_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import colab_tiny  # noqa: E402
import colab_tiny_rl  # noqa: E402


@pytest.fixture(scope="module")
def cfg():
    return colab_tiny.get_config()


def test_default_runs_pretrain_midtrain_rl_and_validates(cfg):
    validate_experiment(cfg)
    assert phase_names(cfg) == ["pretrain", "midtrain", "rl"]
    assert [cfg.phases[n].kind for n in phase_names(cfg)] == ["pretrain", "midtrain", "rl"]
    assert colab_tiny_rl.get_config().to_json() == cfg.to_json()  # the script runs the default


def test_rl_phase_has_evo_cot_stages_and_a_wide_enough_heldout_set(cfg):
    rl_block = cfg.phases.rl
    stages = validate_rl_phase("rl", rl_block, phase_steps(rl_block))
    assert [s.difficulty for s in stages] == [(1,), (1, 2)]
    assert stages[1].max_response_tokens > stages[0].max_response_tokens  # harder, longer
    assert stages[1].length_alpha < stages[0].length_alpha
    rl = rl_settings(rl_block)
    assert rl["eval_problems"] >= 512 and rl["objective"] == "lpo"
    # Carried AdamW state with a long second-moment memory (see colab_tiny.rl_phase).
    assert rl["reset_optimizer"] is False and rl["optimizer"] == {"b2": 0.999}


def test_benchmark_config_swaps_only_the_rl_objective():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import rl_objectives

    for name in ("grpo", "gspo"):
        other = rl_objectives._config(name, 40, epochs=2)
        assert other.phases.rl.rl.objective == name and other.phases.rl.rl.epochs == 2
        assert other.phases.midtrain.to_json() == colab_tiny.get_config().phases.midtrain.to_json()


@pytest.mark.slow
def test_shortened_default_runs_end_to_end_from_the_cli(tmp_path):
    """`ling-jax train --config experiments/colab_tiny.py` with every phase cut to a few steps:
    the RL report lands in the metrics, the RL curves PNG is written, the sample is printed."""
    config = tmp_path / "short.py"  # the default with every phase cut short
    config.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'experiments')!r})\n"
        "import colab_tiny\n"
        "from ling_jax.train.experiment import with_phase_defaults\n\n"
        "def get_config():\n"
        "    cfg = colab_tiny.get_config()\n"
        "    for name in ('pretrain', 'midtrain'):\n"
        "        cfg.phases[name].steps, cfg.phases[name].lr.warmup_steps = 3, 1\n"
        "    rl = colab_tiny.rl_phase(steps=2)\n"
        "    rl.update(batch_size=4, lr=dict(rl['lr'], warmup_steps=1))\n"
        "    rl['rl'].update(eval_problems=16)\n"
        "    cfg.phases.rl = with_phase_defaults(rl)\n"
        "    return cfg\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ling_jax.cli.main", "train", "--config",
                           str(config), f"--workdir={workdir}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sample:\nQuestion: Farah has 5 stamps" in proc.stdout
    assert (workdir / "phase_rl_rl.png").stat().st_size > 10_000
    from ling_jax.train.metrics_log import read_metrics

    last = [r for r in read_metrics(workdir) if r["phase"] == "rl"][-1]
    assert last["heldout_n"] == 16 and last["heldout_delta_low"] <= last["heldout_delta"]
    # The final model carries its tokenizer, so `ling-jax generate --checkpoint` works on it.
    assert (workdir / "final_model" / "tokenizer.json").is_file()
    gen = subprocess.run([sys.executable, "-m", "ling_jax.cli.main", "generate", "--checkpoint",
                          str(workdir / "final_model"), "--prompt", "Question: 2 + 3?\nAnswer:\n",
                          "--max_new_tokens", "4"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.startswith("Question: 2 + 3?\nAnswer:\n")
