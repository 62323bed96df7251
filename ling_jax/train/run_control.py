"""When the train loop stops, and what it tells about where the time went.

- Stop requests: SIGTERM (preemption) and Ctrl-C set a flag the loop reads at the next step
  boundary, where it saves a checkpoint and returns; with several processes the flag is agreed
  on (one process's signal stops all at the same step). A second Ctrl-C interrupts at once.
- Non-finite steps: the step function skips them (train/step.py); after `limit` in a row the run
  stops with NonFiniteError naming the step, the likely cause and the last checkpoint.
- Goodput: seconds waiting for data, in steps, and checkpointing, summed for the run summary.
"""

from __future__ import annotations

import dataclasses
import math
import signal

from ling_jax.train import multihost

# Why a run returned (RunResult.stop_reason); the CLI maps them to exit codes.
FINISHED, MAX_STEPS, PREEMPTED, INTERRUPTED = "finished", "max_steps", "preempted", "interrupted"


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses/updates several steps in a row."""


class StopRequests:
    """SIGTERM → PREEMPTED, first Ctrl-C → INTERRUPTED (the second raises KeyboardInterrupt)."""

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        for sig, handler in ((signal.SIGTERM, self._term), (signal.SIGINT, self._int)):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _term(self, signum, frame) -> None:
        self.reason = self.reason or PREEMPTED

    def _int(self, signum, frame) -> None:
        if self.reason == INTERRUPTED:
            raise KeyboardInterrupt
        self.reason = self.reason or INTERRUPTED

    def agreed(self) -> str | None:
        """The stop reason if any process got a signal (a collective with several processes)."""
        codes = (None, PREEMPTED, INTERRUPTED)
        code = codes.index(self.reason)
        if multihost.any_process(code > 0):
            got = multihost.gather_json(code)
            self.reason = codes[max(got)]
        return self.reason

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class NonFiniteGuard:
    """Counts skipped (non-finite) steps in a row; raises after `limit`."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def check(self, record: dict, last_checkpoint: int | None) -> None:
        if not record.get("nonfinite", 0):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        if self.limit and self.in_a_row >= self.limit:
            kept = (f"the last checkpoint is step {last_checkpoint}" if last_checkpoint
                    else "no checkpoint was written")
            lr = record.get("lr")
            bad = [f"{k} {record[k]}" for k in ("loss", "grad_norm")
                   if k in record and not math.isfinite(record[k])] or [f"the update (lr {lr})"]
            raise NonFiniteError(
                f"step {record['step']} ({record['phase']}): {' / '.join(bad)} not finite for "
                f"{self.in_a_row} steps in a row (skipped, nothing saved); likely a too-high "
                f"learning rate (lr {lr}), bad data or a corrupt checkpoint; {kept}")


@dataclasses.dataclass
class TimeSplit:
    """Where a run's wall time went (seconds): data wait, steps, checkpoint saves."""

    data: float = 0.0
    step: float = 0.0
    checkpoint: float = 0.0

    def add(self, record: dict) -> None:
        self.data += record.get("time_data", 0.0)
        self.step += record.get("time_step", 0.0)
        self.checkpoint += record.get("time_checkpoint", 0.0)

    def summary(self, wall: float) -> str:
        """'steps 91.2%, data 0.4%, checkpoints 1.3%, other 7.1% (compile, eval, start) of 123 s'"""
        wall = max(wall, 1e-9)
        parts = [("steps", self.step), ("data", self.data), ("checkpoints", self.checkpoint)]
        other = max(wall - sum(v for _, v in parts), 0.0)
        text = ", ".join(f"{n} {100 * v / wall:.1f}%" for n, v in parts)
        return f"{text}, other {100 * other / wall:.1f}% (compile, eval, start) of {wall:.0f} s"
