"""One run per workdir: a live holder refuses a second run in one line; a dead one's lock is
taken over and named."""

import subprocess
import sys

import pytest

from ling_jax.train.workdir_lock import WorkdirLock, WorkdirLocked

_HOLD = """
import sys, time
from ling_jax.train.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_second_run_refused_while_the_first_lives_then_stale_lock_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLocked, match=rf"workdir {tmp_path} is in use by pid "
                                                rf"{holder.pid} on host"):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    lock = WorkdirLock(tmp_path).acquire()  # the kernel released the dead holder's lock
    try:
        assert lock.stale_owner and f"pid {holder.pid}" in lock.stale_owner
    finally:
        lock.release()
    with WorkdirLock(tmp_path) as again:  # released cleanly: nothing stale to report
        assert again.stale_owner is None
