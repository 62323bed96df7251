"""What the train loop tells a person and writes down: the Reporter hooks, step records, plots."""

from __future__ import annotations

import pathlib
import tempfile
from typing import Protocol

import jax
import numpy as np
from etils import epath

from ling_jax.train import flops
from ling_jax.train.metrics_log import to_jsonable
from ling_jax.train.plots import plot_phase


class Reporter(Protocol):
    """How the loop tells a person what happens (the CLI prints; tests may record)."""

    def on_start(self, info: dict) -> None: ...
    def on_step(self, record: dict, info: dict) -> None: ...
    def on_phase_end(self, info: dict) -> None: ...


class Silent:
    """The Reporter used when the caller passes none."""

    def on_start(self, info): pass
    def on_step(self, record, info): pass
    def on_phase_end(self, info): pass


class NoLog:
    """Processes other than 0 log nothing (they compute the same replicated metrics)."""

    def __init__(self):
        self.local_dir = pathlib.Path(tempfile.gettempdir())

    def write(self, record): pass
    def records(self): return []
    def sync(self): pass
    def close(self): pass


def peak_flops() -> tuple[float, str]:
    """Peak FLOP/s of one device and where the figure comes from (for MFU)."""
    peak = flops.peak_flops_per_device()
    if peak:
        return peak, "chip table"
    return flops.measure_cpu_peak_flops(), "measured bf16 matmul"


def host_values(tree):
    """Device metrics → host numpy; replicated arrays of a multi-host mesh read their local copy."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return x
    return jax.device_get(jax.tree.map(one, tree))


def step_record(name: str, pos, metrics: dict, seconds: float, step_flops: float,
                peak: float) -> dict:
    """One metrics.jsonl row: phase, steps, the step's metrics, time, throughput and MFU."""
    return {"phase": name, "step": pos.global_step, "phase_step": pos.step_in_phase,
            **to_jsonable(metrics), "step_time": seconds,
            "tokens_per_sec": float(metrics.get("tokens", 0)) / seconds,
            "mfu": flops.mfu(step_flops, seconds, peak, jax.device_count())}


def plot_phase_end(runner, name: str, log, workdir: epath.Path, plots: list[epath.Path],
                   primary: bool, reporter: Reporter, last: dict) -> None:
    """End-of-phase plots, drawn in the log's local directory and synced to the workdir
    (appended to `plots`); then the reporter hears of the phase's end."""
    if primary:
        records = log.records()
        plot_phase(records, name, log.local_dir / f"phase_{name}.png")
        plots.append(workdir / f"phase_{name}.png")
        if hasattr(runner, "plot"):  # e.g. the rl kind's reward/accuracy curves
            runner.plot(records, log.local_dir / f"phase_{name}_rl.png")
            plots.append(workdir / f"phase_{name}_rl.png")
        log.sync()
    reporter.on_phase_end({"phase": name, "plot": str(plots[-1]) if plots else "",
                           "record": last})
