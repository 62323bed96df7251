"""experiments/code_rl.py: its phases and the verbose mid-training option (checked without
training)."""

import pathlib
import sys

from ling_jax.data.config import validate_data_config
from ling_jax.data.pipeline import SOURCE_BUILDERS
from ling_jax.train.experiment import phase_names, validate_experiment

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "experiments"))

import code_rl  # noqa: E402


def test_verbose_fraction_reaches_the_code_midtraining_source():
    plain, verbose = code_rl.get_config(), code_rl.get_config(verbose_fraction=0.5)
    for cfg in (plain, verbose):
        validate_experiment(cfg)
        assert phase_names(cfg) == ["pretrain", "midtrain_code", code_rl.RL_PHASE]
    assert plain.phases.midtrain_code.data.sources.code.verbose_fraction == 0.0
    data = validate_data_config(verbose.phases.midtrain_code.data)
    (spec,) = data["sources"]
    source = SOURCE_BUILDERS[spec["kind"]](spec, 0)
    assert source.verbose_fraction == 0.5
    # The RL prompts are the same task prompts either way.
    assert verbose.phases[code_rl.RL_PHASE].to_dict() == plain.phases[code_rl.RL_PHASE].to_dict()
