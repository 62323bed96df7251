"""One run per workdir: a lock file held with fcntl while `ling-jax train` runs.

The file (WORKDIR/.lock) names the holder's host and pid. The kernel releases the lock when its
process dies however it dies, so a lock file whose lock is free is stale: it is taken over, and
the caller is told whose it was. Bucket workdirs (gs://) cannot be locked this way and are not.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path


class WorkdirLocked(ValueError):
    """Another live run holds the workdir (a user error: one line, nothing written)."""


class WorkdirLock:
    """Context manager: `with WorkdirLock(path) as lock: ...`; `lock.stale_owner` names the dead
    holder whose lock was taken over (None if there was none)."""

    NAME = ".lock"

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / self.NAME
        self.stale_owner: str | None = None
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirLocked(f"workdir {self.path.parent} is in use by {owner}; wait for that "
                                "run to end or use another --workdir") from None
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        self.stale_owner = previous or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty file: nobody's, nothing stale to report
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
