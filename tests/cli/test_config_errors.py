"""A bad --config override is one line naming the field and the syntax that field accepts: absl's
own flag errors (wrong value type, a whole list, a missing value, an unknown flag) included, each
checked against the error absl really raises for it, then end to end through `ling-jax train`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from absl import flags
from ml_collections import config_flags

from ling_jax.cli.config_errors import explain_flag_error
from tests.reliability.hostile import REPO, assert_one_line, cli

CONFIG = str(REPO / "experiments" / "colab_tiny.py")


def _absl_error(arg: str) -> flags.Error:
    """The flags.Error absl raises for `--config CONFIG arg` (a fresh flag registry)."""
    values, argv = flags.FlagValues(), ["ling-jax train", "--config", CONFIG, arg]
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=False,
                                    sys_argv=argv)  # overrides are found in argv at definition
    flags.DEFINE_integer("max_steps", None, "", flag_values=values)
    with pytest.raises(flags.Error) as info:
        values(argv)
        values["config"].value.keys()
    return info.value


@pytest.mark.parametrize("arg,needles", [
    ("--config.phases.pretrain.steps=abc",
     ["--config.phases.pretrain.steps:", "expects an integer", '"--config.phases.pretrain.steps=40"']),
    ("--config.phases.pretrain.lr.peak_lr=fast", ["lr.peak_lr:", "expects a number", "=0.003"]),
    ("--config.model.fp8=maybe", ["--config.model.fp8:", "true or false"]),
    ("--config.phases.rl.rl.stages=1",
     ["'phases.rl.rl.stages' is a list", '"--config.phases.rl.rl.stages[0].steps=VALUE"']),
    ("--config.phases.pretrain", ["--config.phases.pretrain needs a value"]),
    ("--max_stepz=3", ["Unknown command line flag 'max_stepz'", "max_steps?",
                       "see ling-jax train --help"]),
])
def test_absl_flag_errors_become_one_line_naming_field_and_syntax(arg, needles):
    line = explain_flag_error(["--config", CONFIG, arg], _absl_error(arg), "train")
    assert "\n" not in line and "Traceback" not in line
    for needle in needles:
        assert needle in line, (needle, line)


def test_bad_overrides_end_to_end_are_one_line(tmp_path):
    """Before: absl's two lines ('FATAL Flags parsing error' + '--helpfull'), or an IndexError
    traceback for an index past the end of a list."""
    workdir = tmp_path / "run"
    cases = {
        "--config.phases.rl.rl.stages=1": ['"--config.phases.rl.rl.stages[0].steps=VALUE"'],
        "--config.phases.rl.rl.stages[5].steps=1": ["has 2 entries, index 5 is out of range"],
    }
    run = lambda arg: cli("train", "--config", CONFIG, arg, "--workdir", workdir, timeout=120)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, cases))
    for (arg, needles), result in zip(cases.items(), results, strict=True):
        assert_one_line(result, arg.split("=")[0], *needles)
    assert not workdir.exists()


def test_a_field_inside_a_none_is_named_with_the_fix():
    from ling_jax.cli.config_errors import explain

    line = explain(["--config", CONFIG, "--config.phases.pretrain.rope.theta=1e5"], KeyError("x"))
    assert "'phases.pretrain.rope' is None" in line and "in the config file" in line, line


def test_dotted_list_index_gets_the_quoted_form_to_type():
    from ling_jax.cli.config_errors import explain

    line = explain(["--config", CONFIG, "--config.phases.rl.rl.stages.0.steps=1"], KeyError("0"))
    assert line.endswith('("--config.phases.rl.rl.stages[0].steps=1")'), line
