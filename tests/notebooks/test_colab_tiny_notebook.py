"""notebooks/colab_tiny.ipynb stays runnable without running it: valid nbformat, Python in every
code cell (after IPython's `!` rewriting), one parameters cell that CI's injection fits, every
`ling-jax` command a real subcommand with real flags, and CI's shortened run a valid experiment.
`.ci/run` executes it (notebooks/run_headless.py --smoke)."""

from __future__ import annotations

import importlib.util
import re

import nbformat
import pytest
from absl import flags
from IPython.core.inputtransformer2 import TransformerManager
from ml_collections import config_flags

from ling_jax.cli.main import SUBCOMMANDS
from ling_jax.train.experiment import validate_experiment
from tests.reliability.hostile import REPO

NOTEBOOK = REPO / "notebooks" / "colab_tiny.ipynb"
_DEFINE = re.compile(r"""DEFINE_\w+\(\s*["'](\w+)["']""")


def _runner():
    spec = importlib.util.spec_from_file_location("run_headless", REPO / "notebooks" / "run_headless.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nb():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return notebook


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_cells_are_python_and_tagged_for_each_step(nb):
    for source in _code(nb):
        compile(TransformerManager().transform_cell(source), "<cell>", "exec")
    tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
    assert tags == ["parameters", "install", "train", "plots", "generate", "export",
                    "transformers"]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored clean


def _commands(nb) -> list[tuple[str, set[str]]]:
    """(subcommand, flags) of every `!ling-jax SUB ...` line and ["ling-jax", "SUB", ...] list."""
    found = []
    for source in _code(nb):
        for sub, rest in re.findall(r"^!ling-jax (\S+)(.*)$", source, re.M):
            found.append((sub, set(re.findall(r"--([\w.\[\]]+)", rest))))
        for sub, rest in re.findall(r'\["ling-jax", "([\w-]+)"(.*?)\]', source, re.S):
            found.append((sub, set(re.findall(r'"--(\w+)"', rest))))
    return found


def test_commands_use_existing_subcommands_and_flags(nb):
    commands = _commands(nb)
    assert [c for c, _ in commands] == ["train", "generate", "export-hf"]
    for sub, used in commands:
        assert sub in SUBCOMMANDS, sub
        source = (REPO / "ling_jax" / "cli" / f"{SUBCOMMANDS[sub]}.py").read_text()
        assert used <= set(_DEFINE.findall(source)), (sub, used - set(_DEFINE.findall(source)))
    train = next(s for s in _code(nb) if "!ling-jax train" in s)
    config = re.search(r"--config (\S+)", train).group(1)
    assert (REPO / config).is_file() and config == "experiments/colab_tiny.py"


def test_ci_parameters_fit_the_parameters_cell_and_make_a_valid_short_run(nb):
    runner = _runner()
    injected = runner.inject_parameters(nb, runner.SMOKE, until="export")
    assert injected.cells[-1].metadata["tags"] == ["export"]
    cell = next(c for c in injected.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "OVERRIDES = [" in cell.source
    with pytest.raises(ValueError, match="PRETRAIN_STEPZ"):
        runner.inject_parameters(nb, {"PRETRAIN_STEPZ": 1})
    assert runner.parse_params(["MAX_NEW_TOKENS=8", "OVERRIDES=['--x=1']"]) == {
        "MAX_NEW_TOKENS": 8, "OVERRIDES": ["--x=1"]}
    # The overrides through absl, as `ling-jax train` parses them, then the experiment check.
    argv = ["ling-jax train", "--config", str(REPO / "experiments" / "colab_tiny.py"),
            *runner.SMOKE_OVERRIDES]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=False,
                                    sys_argv=argv)
    values(argv)
    cfg = values["config"].value
    validate_experiment(cfg)
    assert [cfg.phases[p].steps for p in cfg.phase_order] == [4, 4, 2]


def test_readme_links_the_notebook():
    readme = (REPO / "README.md").read_text()
    assert "notebooks/colab_tiny.ipynb" in readme
    # The two set-up commands stay as they were.
    assert ('pip install -e ".[test]" && ling-jax train --config experiments/colab_tiny.py '
            '--workdir runs/colab_tiny') in readme
    assert 'pip install -e ".[test,torch,tpu]" && JAX_PLATFORMS=cpu python -m pytest' in readme
