"""One line for a `--config` file or `--config.FIELD=VALUE` override that absl could not parse.

ml_collections raises KeyError / AttributeError / ValueError / OSError from inside absl's flag
parsing (three tracebacks, no field path); `explain` re-reads the config file and walks each
override to name the missing file, the unknown field with its nearest valid name, or the list
index syntax (`stages[0].steps`) that overrides accept. `explain_flag_error` does the same for
absl's own flag errors (a value of the wrong type, a whole list, a missing value, an unknown
flag), which absl prints as two lines and a pointer to --helpfull.
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
    file, overrides = _flag_file_and_overrides(argv, name)
    return file, [path for path, _ in overrides]


def _flag_file_and_overrides(argv: Sequence[str], name: str
                             ) -> tuple[str | None, list[tuple[str, str]]]:
    """(value of --name, (PATH, VALUE) of each --name.PATH=VALUE) as given on the command line."""
    file, overrides, args = None, [], list(argv)
    for i, arg in enumerate(args):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(args):
            file = args[i + 1]
        elif arg.startswith((f"--{name}=", f"-{name}=")):
            file = arg.split("=", 1)[1]
        elif arg.startswith((f"--{name}.", f"-{name}.")):
            path, _, value = arg.split(".", 1)[1].partition("=")
            overrides.append((path, value or "VALUE"))
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
    if not hasattr(node, "keys"):
        return (f"--{flag}: '{where}' is {node!r}, not a group of fields, so '{name}' cannot be "
                f"set on the command line; give {where} a value in the config file")
    keys = _keys(node)
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"valid fields: {', '.join(sorted(keys))}"
    return f"--{flag}: {where or 'the config'} has no field '{name}'; {hint}"


def _check_path(flag: str, cfg: Any, path: str, value: str = "VALUE") -> str | None:
    """Why override `path` does not name a field of `cfg` (None when it does)."""
    node, walked = cfg, ""
    for part in path.split("."):
        if isinstance(node, list | tuple):
            if part.lstrip("-").isdigit():
                rest = path[len(walked) + 1 + len(part):]
                return (f"--{flag}: '{walked}' is a list; index it as {walked}[{part}]{rest} "
                        f'("--config.{walked}[{part}]{rest}={value}")')
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
    file, overrides = _flag_file_and_overrides(argv, name)
    if file is None:
        return f"flags: {error_cause(error)}"
    try:
        cfg = _load(file)
    except ValueError as e:
        return str(e)
    for path, value in overrides:
        problem = _check_path(f"{name}.{path}", cfg, path, value)
        if problem:
            return problem
    return f"--{name} overrides: {error_cause(error)}"


# A field's type → the value syntax ml_collections accepts for it on the command line.
_SYNTAX = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
           tuple: "a tuple"}


def _value_at(cfg: Any, path: str) -> Any:
    from ml_collections.config_flags import config_path

    return config_path.get_value(path, cfg)


def _accepted(flag: str, path: str, value: Any) -> str:
    """What `--flag=VALUE` accepts for the current value of the field at `path`."""
    if isinstance(value, list):
        first = value[0] if value else None
        entry = f"[0].{next(iter(_keys(first)))}" if _keys(first) else "[0]"
        return (f"'{path}' is a list: it cannot be set whole on the command line; set its "
                f"entries by index, e.g. \"--{flag}{entry}=VALUE\"")
    if hasattr(value, "keys"):
        keys = ", ".join(sorted(_keys(value)))
        return f"'{path}' is a group of fields ({keys}); set one of them: --{flag}.FIELD=VALUE"
    kind = next((t for t in _SYNTAX if type(value) is t), None)
    if kind is None:
        return f"give a value like its current one ({value!r})"
    return f"expects {_SYNTAX[kind]}, e.g. \"--{flag}={value}\" (its current value)"


def explain_flag_error(argv: Sequence[str], error: BaseException, command: str,
                       name: str = "config") -> str:
    """One line for an absl flags.Error raised while parsing `argv` (of `ling-jax command`)."""
    message = " ".join(str(error).split())
    found = re.search(rf"\b{name}\.([\w.\[\]-]+?)(?:=|:|\s|$)", message)
    file, _ = _flag_values(argv, name)
    if found is None or file is None:
        message = message.removeprefix("flag ").replace(" ?", "?")
        return f"{message}; see ling-jax {command} --help"
    path = found.group(1).rstrip(".")
    flag = f"{name}.{path}"
    if "Missing value" in message:
        return f"--{flag} needs a value: --{flag}=VALUE"
    try:
        cfg = _load(file)
    except ValueError as e:
        return str(e)
    problem = _check_path(flag, cfg, path)
    if problem:
        return problem
    cause = message.split(": ", 1)[-1] if message.startswith("flag ") else ""
    cause = f" ({cause})" if cause and "not supported" not in cause else ""
    return f"--{flag}: {_accepted(flag, path, _value_at(cfg, path))}{cause}"
