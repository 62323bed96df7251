"""Execute a notebook headless with nbclient, parameters injected papermill-style: CI's
notebook step (`.ci/run`), so notebooks/colab_tiny.ipynb cannot rot.

  python notebooks/run_headless.py --smoke [--until export] [--out executed.ipynb]
  python notebooks/run_headless.py --param 'MAX_NEW_TOKENS=8' --param 'OVERRIDES=[...]'

A cell holding `NAME = <python literal>` lines is inserted after the cell tagged "parameters"
(tag "injected-parameters"); --smoke shortens every phase to a few steps. The notebook runs
from the repository root; the first failing cell ends the run with its error and a non-zero exit.
"""

from __future__ import annotations

import ast
import pathlib
import sys
import time

from absl import app, flags

from ling_jax.cli.path_flags import DEFINE_path

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every phase a few steps (warmups shortened to fit), checkpoints on the way, a short eval:
# the same overrides as the README command in .ci/run.
SMOKE_OVERRIDES = [
    "--config.phases.pretrain.steps=4", "--config.phases.pretrain.lr.warmup_steps=1",
    "--config.phases.midtrain.steps=4", "--config.phases.midtrain.lr.warmup_steps=1",
    "--config.phases.rl.steps=2", "--config.phases.rl.lr.warmup_steps=1",
    "--config.phases.rl.rl.stages[0].steps=1", "--config.phases.rl.rl.eval_problems=16",
    "--config.checkpoint.every_steps=2",
]
SMOKE = {"OVERRIDES": SMOKE_OVERRIDES, "WORKDIR": "runs/colab_tiny_notebook_ci",
         "MAX_NEW_TOKENS": 8}

_NOTEBOOK = flags.DEFINE_string("notebook", str(ROOT / "notebooks" / "colab_tiny.ipynb"),
                                "notebook to execute")
_OUT = DEFINE_path("out", None, "write the executed notebook here (default: nowhere)")
_SMOKE = flags.DEFINE_bool("smoke", False, "inject SMOKE: a few steps per phase")
_PARAMS = flags.DEFINE_multi_string("param", [], "NAME=PYTHON_LITERAL, after --smoke's")
_UNTIL = flags.DEFINE_string("until", None, "stop after the first cell with this tag")
_TIMEOUT = flags.DEFINE_integer("cell_timeout_s", 3600, "seconds one cell may run")


def parse_params(pairs: list[str]) -> dict:
    """{'NAME': value} from 'NAME=PYTHON_LITERAL' strings; ValueError names a bad one."""
    params = {}
    for pair in pairs:
        name, sep, literal = pair.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--param {pair!r}: give NAME=PYTHON_LITERAL, e.g. MAX_NEW_TOKENS=8")
        try:
            params[name] = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            raise ValueError(f"--param {pair!r}: {literal!r} is not a Python literal "
                             "(quote strings: NAME='text')") from None
    return params


def parameter_names(nb) -> set[str]:
    """Names the cell tagged "parameters" assigns (the only ones a run may set)."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{len(cells)} cells are tagged 'parameters'; the notebook needs one")
    names = set()
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def inject_parameters(nb, params: dict, until: str | None = None):
    """The notebook with a cell of `params` after its parameters cell, cut after tag `until`."""
    import nbformat

    unknown = sorted(set(params) - parameter_names(nb))
    if unknown:
        raise ValueError(f"parameters {unknown} are not set in the notebook's parameters cell "
                         f"(it sets {sorted(parameter_names(nb))})")
    nb = nbformat.from_dict(nb)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    if until is not None:
        stops = [i for i, c in enumerate(nb.cells) if until in c.metadata.get("tags", [])]
        if not stops:
            raise ValueError(f"--until {until!r}: no cell has that tag")
        nb.cells = nb.cells[:stops[0] + 1]
    return nb


def main(argv) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    params = {**(SMOKE if _SMOKE.value else {}), **parse_params(_PARAMS.value)}
    nb = inject_parameters(nbformat.read(_NOTEBOOK.value, as_version=4), params, _UNTIL.value)
    client = NotebookClient(nb, timeout=_TIMEOUT.value, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    t0 = time.time()
    try:
        client.execute()
    except CellExecutionError as e:
        print(f"notebook failed after {time.time() - t0:.0f} s:\n{e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if _OUT.value:
            nbformat.write(nb, _OUT.value)
    print(f"executed {len(nb.cells)} cells of {_NOTEBOOK.value} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    app.run(main)
