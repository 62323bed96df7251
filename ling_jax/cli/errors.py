"""One clear line on stderr and a non-zero exit for the errors users can fix."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

# Library errors that carry a user-facing message (ValueError covers ConfigError, CheckpointError).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


def user_errors_exit(fn: Callable) -> Callable:
    """Decorator for CLI mains: a library error becomes `ling-jax: error: ...` and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            print(f"ling-jax: error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapper
