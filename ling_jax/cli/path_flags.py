"""absl flags for user paths: parsed to absolute paths at the CLI boundary (buckets unchanged)."""

from __future__ import annotations

from absl import flags

from ling_jax.paths import absolute_or_none


class _PathParser(flags.ArgumentParser):
    """Parses a flag value to an absolute local path ('~' expanded) or keeps a bucket URL."""

    syntactic_help = "a path"

    def parse(self, argument: str | None) -> str | None:
        return absolute_or_none(argument) if argument else None

    def flag_type(self) -> str:
        return "path"


def DEFINE_path(name: str, default: str | None, help: str) -> flags.FlagHolder:  # noqa: N802
    """Like flags.DEFINE_string, but the value (and the default) is made absolute.

    Subcommands share a path flag of the same name (--out, --tokenizer, --checkpoint, ...): a
    second definition returns the first's holder, so their modules can be imported together (the
    help text is the first one's)."""
    existing = flags.FLAGS._flags().get(name)  # noqa: SLF001 (absl has no public lookup)
    if existing is not None and isinstance(existing.parser, _PathParser) \
            and existing.default == (absolute_or_none(default) if default else None):
        return flags.FlagHolder(flags.FLAGS, existing)
    return flags.DEFINE(_PathParser(), name, default, help, serializer=flags.ArgumentSerializer())
