"""A real full disk for tests: a tiny tmpfs mounted in a user + mount namespace (util-linux
`unshare -rm`), so writes fail with ENOSPC from the kernel, not from a mock."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest


def tiny_tmpfs_prefix(mount_point: os.PathLike, size: str) -> tuple[str, ...]:
    """A command prefix that runs the rest under a `size` tmpfs mounted at `mount_point`; skips
    (fails under CI=true) where unprivileged mount namespaces are not available."""
    probe = ["unshare", "-rm", "true"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode:
        msg = "needs `unshare -rm` (user + mount namespaces) to mount a tiny tmpfs"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return ("unshare", "-rm", "sh", "-c",
            f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"', os.fspath(mount_point))


def progress_free(stderr: str) -> list[str]:
    """stderr lines without tqdm's progress-bar redraws (they are separated by carriage returns)."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not re.search(r"\d+%\|", line)]
