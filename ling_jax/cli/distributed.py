"""Starting JAX's distributed runtime for `ling-jax train`, once, before any device is touched.

Three flags name the job explicitly (all or none): --coordinator_address HOST:PORT,
--num_processes N, --process_id I. With none, a Cloud TPU VM or GKE TPU pod is detected from its
environment and JAX finds the values itself; anywhere else the run is one process. On CPU the
collectives between processes go through gloo. A process that stops answering (kill -9, a lost
host) is noticed through the coordination service's heartbeats within --heartbeat_timeout_s, and
every other process then exits non-zero instead of hanging.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time


@dataclasses.dataclass(frozen=True)
class DistributedArgs:
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    heartbeat_timeout_s: int = 60
    initialization_timeout_s: int = 300

    @property
    def explicit(self) -> bool:
        return self.coordinator_address is not None


def validate(args: DistributedArgs) -> None:
    """One-line ValueError for an inconsistent set of flags (before anything starts)."""
    given = [args.coordinator_address is not None, args.num_processes is not None,
             args.process_id is not None]
    if any(given) and not all(given):
        raise ValueError("give all three of --coordinator_address HOST:PORT, --num_processes N "
                         "and --process_id I, or none of them (auto-detect on Cloud TPU)")
    if args.heartbeat_timeout_s < 1 or args.initialization_timeout_s < 1:
        raise ValueError("--heartbeat_timeout_s and --initialization_timeout_s must be >= 1")
    if not all(given):
        return
    host, _, port = args.coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator_address={args.coordinator_address!r} must be HOST:PORT, "
                         "e.g. 10.0.0.2:8476")
    if args.num_processes < 1:
        raise ValueError(f"--num_processes={args.num_processes} must be >= 1")
    if not 0 <= args.process_id < args.num_processes:
        raise ValueError(f"--process_id={args.process_id} must be in [0, {args.num_processes}) "
                         f"for --num_processes={args.num_processes}")


def _tpu_cluster_detected() -> bool:
    """True on a Cloud TPU VM slice or a GKE TPU pod (JAX's own cluster detection)."""
    try:
        from jax._src.clusters import GceTpuCluster, GkeTpuCluster
    except ImportError:  # a JAX without these detectors: explicit flags still work
        return False
    return GkeTpuCluster.is_env_present() or GceTpuCluster.is_env_present()


def initialize(args: DistributedArgs) -> bool:
    """Start the distributed runtime when the flags or the environment ask for it; returns
    whether it was started. Must run before JAX touches a device (and after any re-exec)."""
    validate(args)
    import jax

    if not args.explicit and not _tpu_cluster_detected():
        return False
    if args.explicit and args.num_processes == 1:
        return False
    # Only the CPU client reads this; accelerators use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(heartbeat_timeout_seconds=args.heartbeat_timeout_s,
                  initialization_timeout=args.initialization_timeout_s)
    if args.explicit:
        kwargs.update(coordinator_address=args.coordinator_address,
                      num_processes=args.num_processes, process_id=args.process_id)
    # JAX's own heartbeat check kills a process with a C++ abort and pages of stack; ours (below)
    # notices a lost peer first and exits with one line.
    kwargs["heartbeat_timeout_seconds"] = 2 * args.heartbeat_timeout_s + 10
    jax.distributed.initialize(**kwargs)
    PeerWatchdog(args.heartbeat_timeout_s).start()
    return True


EXIT_LOST_PROCESS = 4  # a process of the job was lost: rerun the same command to resume


class PeerWatchdog(threading.Thread):
    """Each process bumps a counter in the coordination service's key-value store every second
    and watches the others': a peer whose counter stands still for `timeout_s` (killed, hung
    host) or a coordinator that stops answering ends this process with one line and exit code
    EXIT_LOST_PROCESS, instead of a hang or JAX's abort."""

    PREFIX = "ling_jax/alive/"

    def __init__(self, timeout_s: float, interval_s: float = 1.0):
        super().__init__(name="ling-jax-peer-watchdog", daemon=True)
        self.timeout_s, self.interval_s = timeout_s, interval_s

    def run(self) -> None:
        import jax
        from jax._src import distributed as jax_distributed

        client = jax_distributed.global_state.client
        me, count = jax.process_index(), jax.process_count()
        seen = {p: ("", time.monotonic()) for p in range(count) if p != me}
        beat = 0
        while True:
            beat += 1
            try:
                client.key_value_set(f"{self.PREFIX}{me}", str(beat), allow_overwrite=True)
                values = dict(client.key_value_dir_get(self.PREFIX))
            except Exception as e:  # noqa: BLE001  (the coordinator, process 0, is gone)
                _lost("process 0 (the coordinator)", str(e).strip().splitlines()[0][:160])
            now = time.monotonic()
            for peer, (value, since) in seen.items():
                current = values.get(f"{self.PREFIX}{peer}", "")
                if current != value:
                    seen[peer] = (current, now)
                elif now - since > self.timeout_s:
                    _lost(f"process {peer}", f"no heartbeat for {now - since:.0f} s")
            time.sleep(self.interval_s)


def _lost(who: str, why: str) -> None:
    # On a line of its own (a progress bar may be mid-line on the terminal).
    print(f"\nling-jax: error: lost {who} ({why}); every process stops: rerun the same command on "
          "every process to resume from the last complete checkpoint", file=sys.stderr, flush=True)
    os._exit(EXIT_LOST_PROCESS)


def describe_failure(error: BaseException) -> str:
    """One line for an error raised in a multi-process run, naming the lost process when the
    runtime's message does (coordination-service task ids are process ids)."""
    import re

    text = f"{type(error).__name__}: {error}"
    task = re.search(r"task[:_ /]*(\d+)", text)
    who = f"process {task.group(1)}" if task else "another process"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"lost contact with {who} ({first[:200]})"
