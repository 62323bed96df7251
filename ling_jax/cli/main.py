"""`ling-jax SUBCOMMAND [--flags]`: picks the subcommand, imports only its module (so each defines
its own absl flags), and runs it under absl.app."""

from __future__ import annotations

import importlib
import sys

from ling_jax.cli import host_allocator

# Subcommand → module in ling_jax.cli; each module defines absl flags and `main(argv)`.
SUBCOMMANDS = {
    "train": "train",
    "params": "params",
    "import-hf": "import_hf",
    "export-hf": "export_hf",
    "logits": "logits",
    "merge-checkpoints": "merge_checkpoints",
    "generate": "generate",
    "aot": "aot",
    "train-tokenizer": "train_tokenizer",
    "prepare-chat": "prepare_chat",
}


def _usage() -> str:
    return "usage: ling-jax {" + ",".join(SUBCOMMANDS) + "} [--flags]  (ling-jax CMD --help)"


def run() -> None:
    """Console-script entry point."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(_usage())
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    name = sys.argv[1]
    if name not in SUBCOMMANDS:
        print(f"ling-jax: unknown subcommand {name!r}. {_usage()}", file=sys.stderr)
        sys.exit(2)
    from ling_jax.cli.help import subcommand_help, wants_help

    if wants_help(sys.argv[2:]):  # the subcommand's own flags, not absl's generic usage line
        print(subcommand_help(name, importlib.import_module(f"ling_jax.cli.{SUBCOMMANDS[name]}")),
              end="")
        sys.exit(0)
    host_allocator.restart_with_tuned_allocator()  # before the subcommand imports JAX
    module = importlib.import_module(f"ling_jax.cli.{SUBCOMMANDS[name]}")
    from absl import app

    from ling_jax.cli import quiet_failures

    quiet_failures.install()  # a failed checkpoint write stays one line

    app.run(module.main, argv=[f"ling-jax {name}", *sys.argv[2:]], flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag, config file or override as one line (exit 1)."""
    from absl import flags

    try:
        args = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS["config"].value.keys()  # config_flags defers a load failure to first use
        return args
    except flags.Error as e:  # a value of the wrong type, a whole list, an unknown flag
        from ling_jax.cli.config_errors import explain_flag_error

        command = argv[0].removeprefix("ling-jax ")
        _fail(explain_flag_error(argv[1:], e, command))
    except (KeyError, AttributeError, ValueError, TypeError, OSError, SyntaxError,
            IndexError) as e:
        from ling_jax.cli.config_errors import explain

        _fail(explain(argv[1:], e))


def _fail(line: str) -> None:
    print(f"ling-jax: error: {line}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    run()
