"""The layering of ling_jax/, pallas_kernels/ and tpu_scripts/: one import direction, no circles.

Every `import` and `from ... import` (module level and inside functions) of every module is read
with `ast` (nothing is imported) and checked against LAYERS, lowest first: a module may import its
own unit (package) and the units of lower layers only. docs/architecture.md explains the order.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ROOTS = ("ling_jax", "pallas_kernels", "tpu_scripts")

# Lowest first. Units in one layer do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("ling_jax", "ling_jax.paths"),  # base: the (empty) package and user paths; import nothing
    ("pallas_kernels", "ling_jax.config", "ling_jax.data"),  # kernels, configs, data pipelines
    ("ling_jax.ops",),  # numerics: expert compute backends, attention core, FP8, EP transport
    ("ling_jax.model",),  # the Flax NNX model and decoding
    ("ling_jax.interop",),  # model checkpoints and HF conversion (files ↔ model state)
    ("ling_jax.parallel",),  # meshes, sharding rules, sharded state, the pipeline
    ("ling_jax.train",),  # the train loop, its phases, checkpoints, metrics
    ("ling_jax.rl",),  # the rl phase kind (found by train/phase_kinds.py by module path)
    ("ling_jax.sft",),  # the sft phase kind (same; uses rl's evaluation statistics)
    ("ling_jax.launch",),  # ahead-of-time compiles of the train step for a TPU topology
    ("ling_jax.cli",),  # the `ling-jax` command
    ("tpu_scripts",),  # launching the CLI on TPU VMs
]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for root in ROOTS for p in sorted((REPO / root).rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import statement anywhere in the module."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*package, *([base] if base else [])])
            # `from pkg import sub` imports the module pkg.sub when there is one.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        found += [(t, node.lineno) for t in dict.fromkeys(targets) if t.split(".")[0] in ROOTS]
    return found


def _unit(module: str) -> str:
    """The longest LAYERS unit that `module` belongs to."""
    units = [u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")]
    if not units:
        raise AssertionError(f"{module} is in no unit of LAYERS; add its package there")
    return max(units, key=len)


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _graph() -> dict[str, list[tuple[str, int]]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """'a (line n) imports b' for each import of a unit that is not below the importer's."""
    bad = []
    for module, targets in graph.items():
        unit = _unit(module)
        for target, line in targets:
            other = _unit(target)
            if other != unit and _layer(other) >= _layer(unit):
                bad.append(f"{module} (line {line}) imports {target}: {other} is not below {unit}")
    return bad


def import_circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """One module cycle per strongly connected component of more than one module (or a
    self-import), found with Tarjan's algorithm."""
    edges = {m: sorted({t for t, _ in ts if t in graph}) for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return circles


@pytest.fixture(scope="module")
def graph():
    return _graph()


def test_every_module_belongs_to_a_layer(graph):
    for module in graph:
        _unit(module)


def test_no_upward_import(graph):
    bad = upward_imports(graph)
    assert not bad, "upward imports (see LAYERS in tests/test_layering.py):\n" + "\n".join(bad)


def test_no_import_circle(graph):
    circles = import_circles(graph)
    assert not circles, "import circles:\n" + "\n".join(" ↔ ".join(c) for c in circles)


def test_the_checks_catch_what_they_are_for():
    """A synthetic graph with an upward import and a circle is flagged (the checks can fail)."""
    fake = {"ling_jax.ops.a": [("ling_jax.train.b", 3)], "ling_jax.train.b": [("ling_jax.ops.a", 5)]}
    assert upward_imports(fake) == ["ling_jax.ops.a (line 3) imports ling_jax.train.b: "
                                    "ling_jax.train is not below ling_jax.ops"]
    assert import_circles(fake) == [["ling_jax.ops.a", "ling_jax.train.b"]]
    assert import_circles({"ling_jax.x": [("ling_jax.x", 1)]}) == [["ling_jax.x"]]


def test_function_level_and_relative_imports_are_read(tmp_path):
    source = "def f():\n    from ling_jax.cli import errors\n    from . import sibling\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    known = {"ling_jax.cli.errors", "ling_jax.model.sibling"}
    assert _imports("ling_jax.model.m", path, known) == [("ling_jax.cli.errors", 2),
                                                          ("ling_jax.model.sibling", 3)]
