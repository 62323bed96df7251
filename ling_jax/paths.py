"""User paths: made absolute once, where they enter (CLI flags, library entry points).

Orbax refuses relative checkpoint paths, and a relative path means something else after a
`chdir`; so every local path a user gives is resolved against the working directory at the
boundary. Bucket URLs (gs://, s3://, ...) pass through unchanged.
"""

from __future__ import annotations

import os

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
    """True for 'scheme://...' paths (buckets), which have no working-directory meaning."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """`path` as an absolute epath.Path (local: `~` expanded, resolved against the cwd)."""
    if is_url(path):
        return epath.Path(path)
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def absolute_or_none(path: str | os.PathLike | None) -> str | None:
    """Absolute string form of an optional user path (flags default to None)."""
    return None if path is None else os.fspath(absolute(path))
