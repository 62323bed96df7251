"""Keeps a failed checkpoint write to the one line `user_errors_exit` prints.

When a save fails (a full disk, a read-only bucket), orbax logs the failure with a traceback from
each of its writer threads before re-raising it to the caller, and tensorstore's completion
callbacks then hit orbax's closed event loop and print `RuntimeError: Event loop is closed` as
unraisable exceptions, one per chunk: a full disk read as ~1,200 lines and 150 tracebacks. Both
are echoes of the error the store raises (and the CLI reports, naming the path), so the CLI drops
them, and so does it asyncio's "exception was never retrieved" records of orbax's write futures
(logged when the loop is collected); every other record and unraisable exception passes through
unchanged.
"""

from __future__ import annotations

import logging
import os
import sys

_ORBAX_DIR = f"{os.sep}orbax{os.sep}"
_ORBAX_TMP = ".orbax-checkpoint-tmp"


class _OrbaxErrorEchoes(logging.Filter):
    """Drops ERROR records logged by orbax's own modules (their exceptions reach the caller)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and _ORBAX_DIR in (record.pathname or ""))


class _OrbaxFutureEchoes(logging.Filter):
    """Drops asyncio's 'exception was never retrieved' records of orbax's checkpoint writes.

    A write's exception is either raised in orbax (a frame in its traceback) or set on the future
    by tensorstore's completion callback, without a traceback: then its text names the
    checkpoint's temporary directory.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "never retrieved" not in record.getMessage():
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and _ORBAX_TMP in str(error):
            return False
        tb = error.__traceback__ if error is not None else None
        while tb is not None:
            if _ORBAX_DIR in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


def _is_closed_loop_echo(unraisable) -> bool:
    return (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed")


def install() -> None:
    """Filter orbax's error echoes from absl's logger and closed-loop unraisables (idempotent)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxErrorEchoes) for f in logger.filters):
        logger.addFilter(_OrbaxErrorEchoes())
    loop_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxFutureEchoes) for f in loop_logger.filters):
        loop_logger.addFilter(_OrbaxFutureEchoes())
    previous = sys.unraisablehook
    if getattr(previous, "_ling_jax_quiet", False):
        return

    def hook(unraisable) -> None:
        if not _is_closed_loop_echo(unraisable):
            previous(unraisable)

    hook._ling_jax_quiet = True
    sys.unraisablehook = hook
