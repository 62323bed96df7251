"""validate_experiment checks every phase before anything compiles: each phase's warmup against
the optimizer updates its runner will give the schedule (an rl phase: steps x epochs x
minibatches), the Evo-CoT stages, data and tokenizer paths."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from ling_jax.rl.phase import RLPhase
from ling_jax.train.experiment import ExperimentError, validate_experiment
from ling_jax.train.phases import LMPhase, PhaseContext, make_phase_optimizer

REPO = pathlib.Path(__file__).resolve().parents[2]


def _colab_tiny():
    spec = importlib.util.spec_from_file_location("colab_tiny_cfg", REPO / "experiments" / "colab_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name,steps,warmup", [("pretrain", 4, 10), ("midtrain", 4, 10),
                                               ("rl", 2, 4)])
def test_warmup_beyond_any_phase_is_refused_up_front(name, steps, warmup):
    cfg = _colab_tiny()
    cfg.phases[name].steps, cfg.phases[name].lr.warmup_steps = steps, warmup
    cfg.phases.rl.rl.stages[0]["steps"] = 1
    with pytest.raises(ExperimentError, match=rf"phases\.{name}\.lr: .*warmup_steps={warmup} "
                                              rf"exceeds .*total_steps={steps}"):
        validate_experiment(cfg)
    cfg.phases[name].lr.warmup_steps = steps  # a warmup that fills the phase is allowed
    validate_experiment(cfg)


def test_rl_schedule_counts_optimizer_updates_as_its_runner_does():
    cfg = _colab_tiny()
    rl = cfg.phases.rl
    rl.steps, rl.lr.warmup_steps, rl.rl.stages[0]["steps"] = 2, 4, 1
    rl.rl.minibatches = 2  # 2 steps x 1 epoch x 2 minibatches = 4 updates >= warmup 4
    validate_experiment(cfg)
    assert RLPhase.optimizer_updates(rl) == 4
    rl.rl.epochs = 1
    rl.rl.minibatches = 1
    assert RLPhase.optimizer_updates(rl) == 2
    assert LMPhase.optimizer_updates(cfg.phases.midtrain) == cfg.phases.midtrain.steps


def test_lm_runner_and_validation_agree_on_the_schedule_length():
    """The runner's optimizer is built with the same total_steps that validation checked."""
    cfg = _colab_tiny()
    cfg.phases.pretrain.steps, cfg.phases.pretrain.lr.warmup_steps = 4, 10
    with pytest.raises(ValueError, match="total_steps=4"):
        make_phase_optimizer(PhaseContext(cfg, None, 0, 0), cfg.phases.pretrain)


def test_evo_cot_stages_data_and_tokenizer_paths_are_checked(tmp_path):
    cfg = _colab_tiny()
    cfg.phases.rl.steps, cfg.phases.rl.rl.stages[0]["steps"] = 2, 5  # stage 1 would start at 5
    with pytest.raises(ExperimentError, match=r"phases\.rl\.rl\.stages: .*only 2 steps"):
        validate_experiment(cfg)
    cfg = _colab_tiny()
    cfg.phases.midtrain.data.sources.arithmetic = dict(kind="jsonl", path=str(tmp_path / "no.jsonl"))
    with pytest.raises(ExperimentError, match=r"phases\.midtrain\.data: .*no\.jsonl.*matches no"):
        validate_experiment(cfg)
    cfg = _colab_tiny()
    cfg.tokenizer.kind, cfg.tokenizer.path = "hf", str(tmp_path / "tok")
    with pytest.raises(ExperimentError, match=rf"tokenizer\.path: {tmp_path}/tok does not exist"):
        validate_experiment(cfg)
    (tmp_path / "tok").mkdir()
    with pytest.raises(ExperimentError, match=r"tok/tokenizer\.json does not exist"):
        validate_experiment(cfg)
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    validate_experiment(cfg)


def test_a_phase_sets_its_own_loss_chunks():
    """phases.X.loss_chunks overrides model.loss_chunks for that phase only (0: the model's), in
    the model config its step is built from; a bad value names the field before anything runs."""
    from ling_jax.train.experiment import phase_model_config

    cfg = _colab_tiny()
    cfg.phases.midtrain.loss_chunks = 4
    validate_experiment(cfg)
    assert phase_model_config(cfg.model, cfg.phases.midtrain).loss_chunks == 4
    assert phase_model_config(cfg.model, cfg.phases.pretrain).loss_chunks == cfg.model.loss_chunks
    phase = LMPhase(PhaseContext(cfg, None, 1, 0), "midtrain", cfg.phases.midtrain)
    assert phase.model_cfg.loss_chunks == 4  # the config its train step's graph is built from
    for bad in (-1, True):  # (a float cannot enter the int field: ConfigDict refuses it)
        cfg.phases.midtrain.loss_chunks = bad
        with pytest.raises(ExperimentError, match=r"phases\.midtrain\.loss_chunks: must be an int"):
            validate_experiment(cfg)
