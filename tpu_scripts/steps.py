"""Commands that the tpu_scripts print (--dry_run) or run, one per line, in order."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess


@dataclasses.dataclass(frozen=True)
class Step:
    argv: list[str]
    stdin: str | None = None  # text fed to the command (printed as a here-document)
    stdin_file: str | None = None  # file fed to the command
    text: str | None = None  # output only (e.g. a manifest): printed, nothing runs

    def shell(self) -> str:
        """The step as one shell command line (a here-document for stdin text)."""
        if self.text is not None:
            return self.text.rstrip("\n")
        line = shlex.join(self.argv)
        if self.stdin is not None:
            return f"{line} <<'EOF'\n{self.stdin.rstrip(chr(10))}\nEOF"
        if self.stdin_file is not None:
            return f"{line} < {shlex.quote(self.stdin_file)}"
        return line


def run_steps(steps: list[Step], dry_run: bool) -> None:
    """Print each step; unless dry_run, run it (raises CalledProcessError on a failure)."""
    for step in steps:
        print(step.shell(), flush=True)
        if dry_run or step.text is not None:
            continue
        if step.stdin_file is not None:
            with open(step.stdin_file, "rb") as f:
                subprocess.run(step.argv, stdin=f, check=True)
        else:
            subprocess.run(step.argv, input=step.stdin, text=True, check=True)
