"""`ling-jax SUBCOMMAND --help`: the subcommand's docstring and its own flags.

absl's --help prints `__main__`'s docstring and flags, which for a console script are none; here
the flags are those the subcommand's module (and the path-flag helper it uses) defined.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from types import ModuleType

from absl import flags

HELP_ARGS = ("-h", "--help", "--helpshort", "-?", "-help")

_OVERRIDES = (
    "Any field of the --config file can be overridden: --config.FIELD=VALUE, nested fields with "
    "dots and list entries by index, e.g. --config.phases.pretrain.steps=50 "
    '"--config.phases.rl.rl.stages[0].steps=1". Every phase is validated before anything compiles.'
)


def wants_help(args: Sequence[str]) -> bool:
    """True when the arguments ask for help (before a `--`)."""
    for arg in args:
        if arg == "--":
            return False
        if arg in HELP_ARGS:
            return True
    return False


def _own_flags(values: flags.FlagValues) -> list[flags.Flag]:
    """Flags not defined by absl itself (its logging flags are listed by --helpfull)."""
    found = {}
    for module, module_flags in values.flags_by_module_dict().items():
        if not module.startswith("absl."):
            found.update({f.name: f for f in module_flags})
    return [found[name] for name in sorted(found)]


def _render(flag: flags.Flag) -> str:
    kind = flag.flag_type() if hasattr(flag, "flag_type") else "value"
    head = f"  --{flag.name}" + ("" if kind == "bool" else f"=<{kind}>")
    extra = "" if flag.default is None else f" (default: {flag.default})"
    body = textwrap.fill(f"{flag.help}{extra}", width=96, initial_indent="      ",
                         subsequent_indent="      ", break_on_hyphens=False)
    return f"{head}\n{body}"


def subcommand_help(command: str, module: ModuleType,
                    values: flags.FlagValues = flags.FLAGS) -> str:
    """The help text of `ling-jax command`: usage, the module's docstring, its flags."""
    own = _own_flags(values)
    parts = [f"usage: ling-jax {command} [--flags]", "", (module.__doc__ or "").strip(), "",
             "flags:", *(_render(f) for f in own)]
    if any(f.name == "config" for f in own):
        parts += ["", textwrap.fill(_OVERRIDES, width=100, break_on_hyphens=False)]
    parts += ["", f"absl's logging flags: ling-jax {command} --helpfull"]
    return "\n".join(parts) + "\n"
