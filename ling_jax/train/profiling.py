"""`--profile_steps A:B`: a JAX profiler trace of global steps A..B under WORKDIR/profile/HOST.

The trace (XProf / TensorBoard profile plugin: `tensorboard --logdir WORKDIR/profile`) starts
before step A runs and stops after step B's metrics are on the host, so it holds whole steps.
"""

from __future__ import annotations

import pathlib

import jax


def parse_profile_steps(text: str | None) -> tuple[int, int] | None:
    """'A:B' (1-based global steps, inclusive) → (A, B); '' or None → None."""
    if not text:
        return None
    first, sep, last = text.partition(":")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"--profile_steps={text!r} must be A:B, e.g. 5:7 (global steps)")
    a, b = int(first), int(last)
    if not 1 <= a <= b:
        raise ValueError(f"--profile_steps={text!r}: need 1 <= A <= B")
    return a, b


class StepProfiler:
    """Starts/stops jax.profiler around a range of global steps (one trace per host)."""

    def __init__(self, steps: tuple[int, int] | None, directory: pathlib.Path):
        self.steps, self.active = steps, False
        self.directory = directory / f"host_{jax.process_index()}"

    def before(self, step: int) -> None:
        """Call before global step `step` (1-based) runs."""
        if self.steps and step == self.steps[0] and not self.active:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int) -> None:
        """Call after step `step`'s results are on the host."""
        if self.active and step >= self.steps[1]:
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
