"""N `ling-jax train` processes on this machine, as on a pod: one coordinator on localhost.

For tests and benchmarks of multi-process runs on CPU: each process gets its own fake CPU devices
(--xla_force_host_platform_device_count) and gloo collectives; every process has a timeout, so a
hang fails instead of blocking.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class ProcessResult:
    process_id: int
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def train_command(args: list[str], num_processes: int, process_id: int, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "ling_jax.cli.main", "train", *args]
    if num_processes > 1:
        cmd += [f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
                f"--process_id={process_id}"]
    return cmd


def start(args: list[str], num_processes: int, devices_per_process: int,
          env: dict[str, str] | None = None, cwd: str | None = None) -> list[subprocess.Popen]:
    """Start the processes of one job (not waiting)."""
    port = free_port()
    base = dict(os.environ if env is None else env, JAX_PLATFORMS="cpu",
                ALLOW_MULTIPLE_LIBTPU_LOAD="1",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    return [subprocess.Popen(train_command(args, num_processes, i, port), env=base, cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(num_processes)]


def wait(procs: list[subprocess.Popen], timeout: float) -> list[ProcessResult]:
    """Wait for every process; past `timeout` seconds all are killed (returncode -9)."""
    t0 = time.monotonic()
    results = []
    for i, proc in enumerate(procs):
        left = max(1.0, timeout - (time.monotonic() - t0))
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, err = proc.communicate()
        results.append(ProcessResult(i, proc.returncode, out, err, time.monotonic() - t0))
    return results


def run(args: list[str], num_processes: int, devices_per_process: int, timeout: float = 600,
        env: dict[str, str] | None = None, cwd: str | None = None) -> list[ProcessResult]:
    """Run one job to its end on localhost."""
    return wait(start(args, num_processes, devices_per_process, env, cwd), timeout)
