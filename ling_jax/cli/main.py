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
    host_allocator.restart_with_tuned_allocator()  # before the subcommand imports JAX
    module = importlib.import_module(f"ling_jax.cli.{SUBCOMMANDS[name]}")
    from absl import app

    app.run(module.main, argv=[f"ling-jax {name}", *sys.argv[2:]], flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-file and override failures as one line (exit 1)."""
    from absl import app, flags

    try:
        args = app.parse_flags_with_usage(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS["config"].value.keys()  # config_flags defers a load failure to first use
        return args
    except (KeyError, AttributeError, ValueError, TypeError, OSError, SyntaxError) as e:
        if isinstance(e, flags.Error):
            raise
        from ling_jax.cli.config_errors import explain

        print(f"ling-jax: error: {explain(argv[1:], e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
