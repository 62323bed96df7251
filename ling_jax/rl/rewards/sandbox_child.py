"""The sandbox's child side: runs one untrusted program's tests in its own process.

Started by ling_jax/rl/rewards/sandbox.py as `python -I -S <this file>` (stdlib only, nothing of
ours imported), in a fresh temp dir, in its own session, under `unshare` when available. Before
any untrusted code runs it (1) reads the job (program, entry point, test arguments; never the
expected values) from stdin, (2) sets the resource limits, (3) drops to uid nobody when started by
root (after importing PRELOADED: nobody may not read a root-owned interpreter's other modules),
(4) sends print() to a sink and (5) installs an audit hook refusing processes, sockets, ctypes and
file writes outside the temp dir. It then runs the program and calls the entry point on each
test's arguments, writing one result line per test (tagged with RESULT_TAG) to the original
stdout; the parent compares them with the expected values. The audit hook is defence in depth,
not a security boundary (CPython audit hooks can be bypassed by code that reaches raw memory); the
kernel limits, the namespace and the uid are the boundary.
"""

from __future__ import annotations

import builtins
import json
import os
import resource
import sys

RESULT_TAG = "\x1eLINGJAX-RESULT "
MAX_VALUE_CHARS = 10_000  # a returned value longer than this as JSON counts as an error
MAX_WRITE_OPENS = 16
# Imported before dropping privileges: the modules small functions commonly use.
PRELOADED = ("bisect", "collections", "functools", "heapq", "itertools", "math", "operator", "re",
             "string")  # files the program may open for writing (inside the temp dir)

_BLOCKED_PREFIXES = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn",
                     "os.fork", "os.system", "os.kill", "os.killpg", "os.setuid", "os.chroot",
                     "pty.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "shutil.",
                     "sys.remote_exec", "mmap.")
_PATH_EVENTS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                "os.symlink", "os.link", "os.truncate", "os.utime")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def set_limits(limits: dict) -> None:
    """CPU seconds, address space, file size, processes, open files; no core dumps."""
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2)  # SIGXFSZ beyond
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def drop_privileges(uid: int | None) -> None:
    """Become `uid` (gid alike, no supplementary groups): a root parent's children run as nobody."""
    if uid is not None:
        for name in PRELOADED:
            __import__(name)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _inside(path, root: str) -> bool:
    if isinstance(path, int):  # an already open descriptor
        return True
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == root or real.startswith(root + os.sep)


def make_audit_hook(root: str):
    """An audit hook refusing processes, sockets, ctypes and writes outside `root`."""
    opened = [0]

    def hook(event: str, args: tuple) -> None:
        if event.startswith(_BLOCKED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing:
                if not _inside(path, root):
                    raise PermissionError(f"sandbox: writing {path!r} outside the temp dir")
                opened[0] += 1
                if opened[0] > MAX_WRITE_OPENS:
                    raise PermissionError("sandbox: too many files opened for writing")
        elif event in _PATH_EVENTS and args and not _inside(args[0], root):
            raise PermissionError(f"sandbox: {event} outside the temp dir")

    return hook


class _CappedSink:
    """A text stream keeping nothing: print() of the program costs no memory or disk."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _emit(fd: int, record: dict) -> None:
    os.write(fd, (RESULT_TAG + json.dumps(record) + "\n").encode())


def _encode(value) -> str:
    text = json.dumps(value, allow_nan=False)
    if len(text) > MAX_VALUE_CHARS:
        raise ValueError("return value too large")
    return text


def run_job(job: dict, out_fd: int) -> None:
    """Run the program, then each test; one result line per test on `out_fd`."""
    namespace = {"__name__": "__completion__", "__builtins__": builtins}
    try:
        code = compile(job["program"], "<completion>", "exec")
        exec(code, namespace)  # noqa: S102 - untrusted code, in this sandboxed child only
        fn = namespace[job["entry_point"]]
    except BaseException as e:  # noqa: BLE001 - any failure of the program is its result
        _emit(out_fd, {"load_error": type(e).__name__})
        return
    for i, args_json in enumerate(job["args"]):
        try:
            value = _encode(fn(*json.loads(args_json)))
            _emit(out_fd, {"case": i, "value": value})
        except BaseException as e:  # noqa: BLE001
            _emit(out_fd, {"case": i, "error": type(e).__name__})


def main() -> None:
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    set_limits(job["limits"])
    drop_privileges(job["run_as"])
    out_fd = os.dup(1)
    sys.stdout = sys.stderr = _CappedSink()
    sys.setrecursionlimit(2000)
    sys.addaudithook(make_audit_hook(os.path.realpath(job["root"])))
    run_job(job, out_fd)
    _emit(out_fd, {"done": True})


if __name__ == "__main__":
    main()
