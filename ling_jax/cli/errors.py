"""One clear line on stderr and a non-zero exit for the errors users can fix."""

from __future__ import annotations

import errno
import functools
import re
import sys
from collections.abc import Callable

from ling_jax.orbax_errors import error_cause

# Library errors that carry a user-facing message (ValueError covers ConfigError, CheckpointError).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)

# OSErrors about a user's path (read-only, full, not permitted, wrong kind): the user can fix them.
_HINTS = {
    errno.ENOSPC: "free space there or choose another location",
    errno.EDQUOT: "free space there or choose another location",
    errno.EROFS: "choose a writable location",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.ENOTDIR: "a parent of it is a file, not a directory",
    errno.EISDIR: "it is a directory; give a file path",
    errno.ENOENT: "check the path",
    errno.EEXIST: "choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
}
# The same failures when a library (tensorstore) reports them only as text.
_MARKER_ERRNO = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
                 "Permission denied": errno.EACCES, "Disk quota exceeded": errno.EDQUOT,
                 "Not a directory": errno.ENOTDIR}
_MARKERS = tuple(_MARKER_ERRNO)


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def path_error_line(e: BaseException) -> str | None:
    """One line naming the path and the cause when `e` is (or wraps) a user-path OSError."""
    for err in _chain(e):
        if isinstance(err, OSError) and err.errno in _HINTS:
            paths = [p for p in (err.filename, err.filename2) if p is not None]
            where = " -> ".join(str(p) for p in paths) if paths else "a file being written"
            return f"{where}: {err.strerror or err}; {_HINTS[err.errno]}"
    text = error_cause(e, limit=100_000)
    marker = next((m for m in _MARKERS if m in text), None)
    if marker is None:
        return None
    # tensorstore: '... Failed writing: "/path/to/file": ... No space left on device [...]'
    paths = re.findall(r'"(/[^"]+)"', text)
    where = paths[-1] if paths else "a file being written"
    return f"{where}: {marker}; {_HINTS[_MARKER_ERRNO[marker]]}"


def user_errors_exit(fn: Callable) -> Callable:
    """Decorator for CLI mains: a library error becomes `ling-jax: error: ...` and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            print(f"ling-jax: error: {path_error_line(e) or e}", file=sys.stderr)
            sys.exit(1)
        except Exception as e:
            line = path_error_line(e)
            if line is None:
                raise
            print(f"ling-jax: error: {line}", file=sys.stderr)
            sys.exit(1)

    return wrapper
