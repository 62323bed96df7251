"""One line for a `--config` file or `--config.FIELD=VALUE` override that absl could not parse.

ml_collections raises KeyError / AttributeError / ValueError / OSError from inside absl's flag
parsing (three tracebacks, no field path); `explain` re-reads the config file and walks each
override to name the missing file, the unknown field with its nearest valid name, or the list
index syntax (`stages[0].steps`) that overrides accept.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Sequence
from typing import Any

from ling_jax.orbax_errors import error_cause

_PART = re.compile(r"([A-Za-z_]\w*)((?:\[-?\d+\])*)$")


def _flag_values(argv: Sequence[str], name: str) -> tuple[str | None, list[str]]:
    """(value of --name, override paths of --name.PATH=...) as given on the command line."""
    file, overrides, args = None, [], list(argv)
    for i, arg in enumerate(args):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(args):
            file = args[i + 1]
        elif arg.startswith((f"--{name}=", f"-{name}=")):
            file = arg.split("=", 1)[1]
        elif arg.startswith((f"--{name}.", f"-{name}.")):
            overrides.append(arg.split(".", 1)[1].split("=", 1)[0])
    return file, overrides


def _load(file: str) -> Any:
    """get_config() of a config file (absl's 'file.py:arg' form included)."""
    path, arg = file, None
    if not os.path.isfile(path) and ":" in file:
        path, arg = file.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ValueError(f"--config: file {os.path.abspath(path)} not found")
    spec = importlib.util.spec_from_file_location("_ling_jax_config_check", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config() if arg is None else module.get_config(arg)
    except Exception as e:  # the user's file: any error is theirs to fix
        raise ValueError(f"--config {os.path.abspath(path)}: cannot be loaded "
                         f"({error_cause(e)})") from None


def _keys(node: Any) -> list[str]:
    return [str(k) for k in node.keys()] if hasattr(node, "keys") else []


def _unknown(flag: str, where: str, name: str, node: Any) -> str:
    keys = _keys(node)
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"valid fields: {', '.join(sorted(keys))}"
    return f"--{flag}: {where or 'the config'} has no field '{name}'; {hint}"


def _check_path(flag: str, cfg: Any, path: str) -> str | None:
    """Why override `path` does not name a field of `cfg` (None when it does)."""
    node, walked = cfg, ""
    for part in path.split("."):
        if isinstance(node, list | tuple):
            if part.lstrip("-").isdigit():
                rest = path[len(walked) + 1 + len(part):]
                return (f"--{flag}: '{walked}' is a list; index it as {walked}[{part}]{rest} "
                        f"(--config.{walked}[{part}]{rest}=VALUE)")
            return f"--{flag}: '{walked}' is a list; index it as {walked}[0]"
        match = _PART.match(part)
        if not match:
            return f"--{flag}: '{part}' is not a field name (fields are name or name[index])"
        name, indices = match.groups()
        if name not in _keys(node):
            return _unknown(flag, walked, name, node)
        node = node[name]
        walked = f"{walked}.{name}" if walked else name
        for index in re.findall(r"-?\d+", indices):
            if not isinstance(node, list | tuple):
                return f"--{flag}: '{walked}' is not a list and cannot be indexed"
            if not -len(node) <= int(index) < len(node):
                return f"--{flag}: '{walked}' has {len(node)} entries, index {index} is out of range"
            node = node[int(index)]
            walked += f"[{index}]"
    return None


def explain(argv: Sequence[str], error: BaseException, name: str = "config") -> str:
    """One line for `error`, raised while absl parsed `argv` holding --config (and overrides)."""
    file, overrides = _flag_values(argv, name)
    if file is None:
        return f"flags: {error_cause(error)}"
    try:
        cfg = _load(file)
    except ValueError as e:
        return str(e)
    for path in overrides:
        problem = _check_path(f"{name}.{path}", cfg, path)
        if problem:
            return problem
    return f"--{name} overrides: {error_cause(error)}"
