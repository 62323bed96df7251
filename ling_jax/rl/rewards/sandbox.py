"""Run untrusted Python (model completions) against tests in a separate, limited process.

Nothing of the program ever runs in the calling process. Each job gets:
  - a fresh temp dir as cwd, HOME and TMPDIR (removed afterwards), a minimal environment;
  - its own session (process group), SIGKILLed as a whole on the wall-clock timeout;
  - kernel limits set by the child before any untrusted code: RLIMIT_CPU (SIGXCPU / SIGKILL),
    RLIMIT_AS (memory bombs get MemoryError), RLIMIT_FSIZE (file and stdout size), RLIMIT_NPROC
    (fork bombs get EAGAIN), RLIMIT_NOFILE, no core dumps; the kernel ignores RLIMIT_NPROC for
    root, so a root parent's children drop to uid/gid NOBODY first (which also denies writes to
    root's files);
  - no network: a new, empty network namespace (`unshare -rn`, user + net namespaces, when the
    kernel allows it, probed once: NETWORK_ISOLATION says which) plus, always, an audit hook in the
    child refusing socket/subprocess/fork/exec/ctypes events and file writes outside the temp dir
    (sandbox_child.py);
  - stdout redirected to a file in the temp dir (capped by RLIMIT_FSIZE), print() discarded.
The expected values never enter the child: it returns each test's value as JSON and this process
compares (json.loads only, never eval). Jobs run in a bounded thread pool (each thread waits on its
own subprocess), so one RL step's completions are scored in parallel.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from ling_jax.rl.rewards.sandbox_child import RESULT_TAG

CHILD = pathlib.Path(__file__).with_name("sandbox_child.py")
MAX_PROGRAM_CHARS = 20_000


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-job limits (defaults sized for a few small function calls)."""

    cpu_seconds: int = 2
    wall_seconds: float = 5.0
    memory_bytes: int = 256 * 2**20
    file_bytes: int = 256 * 2**10  # any one file, stdout included
    processes: int = 1  # RLIMIT_NPROC: no child processes

    def __post_init__(self) -> None:
        if self.cpu_seconds < 1 or self.wall_seconds <= 0 or self.processes < 0:
            raise ValueError(f"sandbox limits must be positive, got {self}")
        if self.memory_bytes < 64 * 2**20:
            raise ValueError(f"sandbox memory_bytes={self.memory_bytes} is below the 64 MiB the "
                             "Python interpreter itself needs; raise it")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """What one job did: per-test pass/fail and how the process ended."""

    passed: tuple[bool, ...]  # one per test
    status: str  # "ok" | "load_error" | "timeout" | "killed" | "crashed" | "too_long"
    detail: str  # exception name, signal name or return code
    wall_seconds: float
    output_bytes: int

    @property
    def all_passed(self) -> bool:
        return bool(self.passed) and all(self.passed)

    @property
    def fraction(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


NOBODY = 65534  # uid/gid a root parent's children drop to (RLIMIT_NPROC binds only non-root)
ISOLATIONS = ("namespace", "audit-hook")


def _unshare_flags() -> str:
    # A real root needs no user namespace for a network namespace, and must keep its real uid
    # mapping to drop to NOBODY afterwards; anyone else maps itself to root in a user namespace.
    return "-n" if os.geteuid() == 0 else "-rn"


@functools.cache
def network_isolation() -> str:
    """'namespace' when `unshare` can give a child an empty network namespace here, else
    'audit-hook' (the child's audit hook alone refuses sockets). Probed once per process."""
    exe = shutil.which("unshare")
    if exe is None:
        return "audit-hook"
    try:
        done = subprocess.run([exe, _unshare_flags(), "true"], capture_output=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return "audit-hook"
    return "namespace" if done.returncode == 0 else "audit-hook"


def _command(isolation: str) -> list[str]:
    if isolation not in ISOLATIONS:
        raise ValueError(f"sandbox isolation {isolation!r} is unknown; use one of {ISOLATIONS}")
    base = [sys.executable, "-I", "-S", str(CHILD)]
    return ["unshare", _unshare_flags(), *base] if isolation == "namespace" else base


def _parse(path: pathlib.Path, n_tests: int, cap: int) -> tuple[dict[int, dict], dict]:
    """Per-test records and the last non-test record of the child's stdout file."""
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    tests, other = {}, {}
    for line in data.decode("utf-8", "replace").split("\n"):
        if not line.startswith(RESULT_TAG):
            continue
        try:
            record = json.loads(line[len(RESULT_TAG):])
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        case = record.get("case")
        if isinstance(case, int) and 0 <= case < n_tests:
            tests[case] = record
        else:
            other.update(record)
    return tests, other


def _matches(record: dict | None, expected) -> bool:
    if record is None or not isinstance(record.get("value"), str):
        return False
    try:
        value = json.loads(record["value"])
    except ValueError:
        return False
    # bool is an int subclass in Python: True must not pass for 1 (nor 1 for True).
    return type(value) is type(expected) and value == expected


def _ending(returncode: int, timed_out: bool, other: dict) -> tuple[str, str]:
    if timed_out:
        return "timeout", "wall clock"
    if returncode < 0:
        return "killed", signal.Signals(-returncode).name
    if "load_error" in other:
        return "load_error", str(other["load_error"])
    if returncode != 0 or not other.get("done"):
        return "crashed", f"exit {returncode}"
    return "ok", ""


def run_program(program: str, entry_point: str, args: Sequence[Sequence], expected: Sequence,
                limits: SandboxLimits = SandboxLimits(),
                isolation: str | None = None) -> SandboxResult:
    """Run `program`, call `entry_point(*args[i])` for each test in a sandboxed child, compare.

    isolation: None = the best available (network_isolation()); "audit-hook" forces the fallback.
    """
    command = _command(isolation or network_isolation())
    if len(args) != len(expected):
        raise ValueError(f"got {len(args)} test argument tuples but {len(expected)} expected values")
    start = time.perf_counter()
    if len(program) > MAX_PROGRAM_CHARS:
        return SandboxResult((False,) * len(args), "too_long", f"{len(program)} chars", 0.0, 0)
    root = tempfile.mkdtemp(prefix="ling_jax_sandbox_")
    run_as = NOBODY if os.geteuid() == 0 else None
    try:
        if run_as is not None:
            os.chown(root, run_as, run_as)
        job = {"program": program, "entry_point": entry_point, "root": root, "run_as": run_as,
               "args": [json.dumps(list(a)) for a in args],
               "limits": dataclasses.asdict(limits)}
        env = {"HOME": root, "TMPDIR": root, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}
        out_path = pathlib.Path(root) / "stdout"
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.DEVNULL, cwd=root, env=env,
                                    start_new_session=True)
            timed_out = False
            try:
                proc.communicate(json.dumps(job).encode(), timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        tests, other = _parse(out_path, len(args), limits.file_bytes)
        status, detail = _ending(proc.returncode, timed_out, other)
        passed = tuple(_matches(tests.get(i), e) for i, e in enumerate(expected))
        return SandboxResult(passed, status, detail, time.perf_counter() - start,
                             out_path.stat().st_size)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole session (it may have left processes behind), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


@dataclasses.dataclass(frozen=True, eq=False)
class SandboxJob:
    """One program and its tests (JSON-able values, lists included: compare jobs by `key`)."""

    program: str
    entry_point: str
    args: tuple
    expected: tuple

    @property
    def key(self) -> tuple[str, str, str]:
        """Equal for jobs that must give equal results."""
        return self.program, self.entry_point, json.dumps([self.args, self.expected])


def run_jobs(jobs: Sequence[SandboxJob], limits: SandboxLimits = SandboxLimits(),
             workers: int | None = None, isolation: str | None = None) -> list[SandboxResult]:
    """Results of `jobs` in order, at most `workers` children at once (default: CPU count, <= 8).

    Identical jobs run once.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    unique = list({j.key: j for j in jobs}.values())
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        done = dict(zip((j.key for j in unique), pool.map(
            lambda j: run_program(j.program, j.entry_point, j.args, j.expected, limits, isolation),
            unique),
            strict=True))
    return [done[j.key] for j in jobs]
