"""The phase-kind registry: kinds found by module path, imported only when an experiment names one."""

import os
import pathlib
import subprocess
import sys

import pytest

from ling_jax.train import phase_kinds
from ling_jax.train.experiment import ExperimentError, validate_experiment
from tests.rl.rl_fixtures import rl_experiment

REPO = pathlib.Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: this test session has long imported ling_jax.rl elsewhere.
_SCRIPT = """
import sys
from ling_jax.train.experiment import validate_experiment
from ling_jax.train.loop import run_experiment  # noqa: F401  (the whole loop, imported)
from tests.train.experiment_fixtures import small_experiment
validate_experiment(small_experiment())
print("after_lm", sorted(m for m in sys.modules if m.startswith("ling_jax.rl")))
from tests.rl.rl_fixtures import rl_experiment
validate_experiment(rl_experiment())
print("after_rl", "ling_jax.rl.phase" in sys.modules)
"""


def test_the_loop_imports_rl_only_when_an_experiment_names_it():
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "after_lm []" in out.stdout
    assert "after_rl True" in out.stdout


def test_kinds_resolve_to_their_runner_classes():
    from ling_jax.rl.phase import RLPhase
    from ling_jax.sft.phase import SFTPhase
    from ling_jax.train.phases import LMPhase

    assert phase_kinds.kind_names() == ["midtrain", "pretrain", "rl", "sft"]
    assert phase_kinds.phase_kind("pretrain") is LMPhase
    assert phase_kinds.phase_kind("rl") is RLPhase
    assert phase_kinds.phase_kind("sft") is SFTPhase
    assert phase_kinds.phase_kinds() == {"midtrain": LMPhase, "pretrain": LMPhase, "rl": RLPhase,
                                         "sft": SFTPhase}


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown phase kind 'dpo'; choose one of \['midtrain'"):
        phase_kinds.phase_kind("dpo")


def test_an_rl_experiment_is_validated_by_the_rl_kind():
    cfg = rl_experiment()
    cfg.phases.rl.rl.group_size = 1  # the rl kind's own check (groups need two samples)
    with pytest.raises(ExperimentError, match=r"phases\.rl\.rl\.group_size"):
        validate_experiment(cfg)


def test_a_registered_kind_is_offered(monkeypatch):
    monkeypatch.setattr(phase_kinds, "_LOADED", dict(phase_kinds._LOADED))
    marker = type("Custom", (), {})
    phase_kinds.register_phase_kind("custom", marker)
    assert "custom" in phase_kinds.kind_names()
    assert phase_kinds.phase_kind("custom") is marker
