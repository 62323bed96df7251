"""A deterministic style score of Python source in [0, 1], read from its text and `ast` (no
execution, no third-party linter, so every machine scores alike).

score = mean of six checks, each in [0, 1]:
  line_length  fraction of non-blank lines of at most MAX_LINE chars (PEP 8's 79)
  whitespace   fraction of lines without trailing whitespace or tab indentation
  naming       fraction of bound names (functions, arguments, assigned names) in snake_case
  docstring    fraction of functions with a docstring (1 when there is none)
  nesting      1 when no block nests deeper than MAX_DEPTH levels, else MAX_DEPTH / depth
  unused       fraction of names assigned inside functions that are read somewhere
Source that does not parse scores 0.
"""

from __future__ import annotations

import ast
import re

MAX_LINE = 79
MAX_DEPTH = 3
CHECKS = ("line_length", "whitespace", "naming", "docstring", "nesting", "unused")
_SNAKE = re.compile(r"_{0,2}[a-z][a-z0-9_]*\Z")
_BLOCKS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try,
           ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Match)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _fraction(good: int, total: int) -> float:
    return 1.0 if total == 0 else good / total


def _depth(node: ast.AST, level: int = 0) -> int:
    """Deepest block nesting under `node` (a module's top-level def is level 1)."""
    deepest = level
    for child in ast.iter_child_nodes(node):
        inner = level + 1 if isinstance(child, _BLOCKS) else level
        deepest = max(deepest, _depth(child, inner))
    return deepest


def _bound_names(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, _FUNCTIONS):
            names.append(node.name)
            names += [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
    return names


def _unused_fraction(tree: ast.AST) -> float:
    stored: set[str] = set()
    for fn in (n for n in ast.walk(tree) if isinstance(n, _FUNCTIONS)):
        stored |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)
                   and isinstance(n.ctx, ast.Store) and n.id != "_"}
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
              and isinstance(n.ctx, ast.Load)}
    return _fraction(len(stored & loaded), len(stored))


def style_checks(source: str) -> dict[str, float] | None:
    """Each check's value, or None when `source` does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    lines = source.splitlines()
    text_lines = [line for line in lines if line.strip()]
    functions = [n for n in ast.walk(tree) if isinstance(n, _FUNCTIONS)]
    names = _bound_names(tree)
    depth = _depth(tree)
    return {
        "line_length": _fraction(sum(len(x) <= MAX_LINE for x in text_lines), len(text_lines)),
        "whitespace": _fraction(sum(x == x.rstrip() and not x.startswith("\t") for x in lines),
                                len(lines)),
        "naming": _fraction(sum(bool(_SNAKE.match(n)) for n in names), len(names)),
        "docstring": _fraction(sum(ast.get_docstring(f) is not None for f in functions),
                               len(functions)),
        "nesting": 1.0 if depth <= MAX_DEPTH else MAX_DEPTH / depth,
        "unused": _unused_fraction(tree),
    }


def aesthetics_score(source: str) -> float:
    """The mean of the style checks (module doc) in [0, 1]; 0 when `source` does not parse."""
    checks = style_checks(source)
    return 0.0 if checks is None else sum(checks.values()) / len(checks)
