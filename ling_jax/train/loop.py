"""The one train loop: runs an experiment's phases in order, with exact resume and checkpoints.

State carried across phases: params, optimizer state, expert biases, global step. Checkpoints
hold that state plus {phase index, step in phase} and the phase's data-iterator state, so a run
killed at any moment resumes from its latest complete checkpoint and reproduces the same losses.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import time
from typing import Any, Protocol

import jax
import numpy as np
from flax import nnx

from ling_jax.model.moe import ExpertBias
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.train import flops
from ling_jax.train.checkpoint import CheckpointStore
from ling_jax.train.experiment import phase_names, phase_steps, validate_experiment
from ling_jax.train.fp8_monitor import make_fp8_monitor, monitor_due
from ling_jax.train.metrics_log import MetricsLog, read_metrics, to_jsonable
from ling_jax.train.phases import PhaseContext, make_phase_optimizer, phase_kinds
from ling_jax.train.plots import plot_phase
from ling_jax.train.tokenizer_setup import build_tokenizer


class Reporter(Protocol):
    """How the loop tells a person what happens (the CLI prints; tests may record)."""

    def on_start(self, info: dict) -> None: ...
    def on_step(self, record: dict, info: dict) -> None: ...
    def on_phase_end(self, info: dict) -> None: ...


class _Silent:
    def on_start(self, info): pass
    def on_step(self, record, info): pass
    def on_phase_end(self, info): pass


@dataclasses.dataclass
class RunResult:
    workdir: pathlib.Path
    global_step: int
    preempted: bool
    final_metrics: dict
    plots: list[pathlib.Path]
    checkpoint_dir: pathlib.Path
    state: dict  # final train state (params, biases, opt_state, step)
    tokenizer: Any
    final_model: pathlib.Path | None = None  # model checkpoint of the final state


class _Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint and returns at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def init_state(cfg, optimizer) -> dict:
    model = LingForCausalLM(cfg.model, rngs=nnx.Rngs(int(cfg.seed)))
    _, params, biases = nnx.split(model, nnx.Param, ExpertBias)
    params, biases = params.to_pure_dict(), biases.to_pure_dict()
    return {"params": params, "biases": biases, "opt_state": optimizer.init(params),
            "step": np.zeros((), np.int32)}


def _check_workdir(workdir: pathlib.Path, cfg) -> None:
    """Refuse to resume a workdir written by a different model (nothing is overwritten)."""
    saved = workdir / "experiment.json"
    current = json.loads(cfg.to_json_best_effort())
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous.get("model") != current.get("model"):
            raise ValueError(f"{workdir} holds a run of a different model; use a new --workdir "
                             "or the same model config to resume")
    workdir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(current, indent=1))


def _peak_flops() -> tuple[float, str]:
    peak = flops.peak_flops_per_device()
    if peak:
        return peak, "chip table"
    return flops.measure_cpu_peak_flops(), "measured bf16 matmul"


@dataclasses.dataclass
class _Position:
    """Where a run is: phase, step inside it, global step, and the phase's data state."""

    phase_index: int
    step_in_phase: int
    global_step: int
    data_state: dict | None


class _Run:
    """One execution of run_experiment: owns the store, the metrics log and the step loop."""

    def __init__(self, cfg, workdir: pathlib.Path, reporter: Reporter, shard_fn,
                 max_steps: int | None):
        self.cfg, self.workdir, self.reporter = cfg, workdir, reporter
        self.shard_fn, self.max_steps = shard_fn, max_steps
        self.tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, workdir)
        self.names = phase_names(cfg)
        self.lengths = [phase_steps(cfg.phases[n]) for n in self.names]
        self.starts = np.cumsum([0, *self.lengths]).tolist()
        ck = cfg.checkpoint
        self.store = CheckpointStore(workdir / "checkpoints", keep=ck.keep,
                                     keep_every=ck.keep_every or None, async_save=ck.async_save)
        self.plots: list[pathlib.Path] = []
        self.last: dict = {}

    def initial_state(self) -> tuple[dict, _Position, int | None]:
        """A fresh state, or the latest complete checkpoint's."""
        optimizer = make_phase_optimizer(PhaseContext(self.cfg, self.tokenizer, 0, 0),
                                         self.cfg.phases[self.names[0]])
        resume = self.store.latest_step()
        if resume is None:
            return init_state(self.cfg, optimizer), _Position(0, 0, 0, None), None
        abstract = jax.eval_shape(lambda: init_state(self.cfg, optimizer))
        state, meta, data_state = self.store.restore(resume, abstract_state=abstract)
        index, step = meta["phase_index"], meta["step_in_phase"]
        return state, _Position(index, step, int(self.starts[index] + step), data_state), resume

    def _save(self, state, pos: _Position, runner, phase_done: bool) -> None:
        meta = {"phase_index": pos.phase_index + phase_done, "phase": self.names[pos.phase_index],
                "step_in_phase": 0 if phase_done else pos.step_in_phase}
        data = None if phase_done else runner.data_state()
        self.store.save(pos.global_step, state, meta, data, force=True)

    def run_phase(self, state, pos: _Position, log: MetricsLog, peak: float,
                  preemption: _Preemption) -> tuple[dict, bool]:
        """Steps of the current phase from pos; returns (state, stopped early)."""
        name = self.names[pos.phase_index]
        phase = self.cfg.phases[name]
        ctx = PhaseContext(self.cfg, self.tokenizer, pos.phase_index, self.starts[pos.phase_index],
                           jax.process_index(), jax.process_count(), self.shard_fn, self.workdir)
        runner = phase_kinds()[phase.kind](ctx, name, phase)
        if pos.data_state is not None and pos.step_in_phase > 0:
            runner.set_data_state(pos.data_state)
        step_flops = flops.training_flops_per_step(runner.model_cfg, phase.seq_len,
                                                   phase.seq_len * phase.batch_size)
        every = phase.checkpoint_every or self.cfg.checkpoint.every_steps
        length, last_phase = self.lengths[pos.phase_index], pos.phase_index == len(self.names) - 1
        monitor_every = int(self.cfg.get("fp8_monitor_every", 0))
        monitor = make_fp8_monitor(runner.model_cfg) if monitor_every else None
        stopped = self.max_steps is not None and pos.global_step >= self.max_steps
        while pos.step_in_phase < length and not stopped:
            t0 = time.perf_counter()
            state, metrics = runner.step(state)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - t0
            pos.step_in_phase += 1
            pos.global_step += 1
            self.last = {"phase": name, "step": pos.global_step, "phase_step": pos.step_in_phase,
                         **to_jsonable(metrics), "step_time": seconds,
                         "tokens_per_sec": float(metrics.get("tokens", 0)) / seconds,
                         "mfu": flops.mfu(step_flops, seconds, peak, jax.device_count())}
            if monitor and getattr(runner, "last_batch", None) is not None and monitor_due(
                    pos.global_step, monitor_every):
                # Two rows suffice for statistics; the monitor runs the layers unrolled.
                rows = jax.tree.map(lambda x: x[:2], runner.last_batch)
                self.last.update(monitor(state["params"], state["biases"], rows))
            log.write(self.last)
            self.reporter.on_step(self.last, {"total_steps": self.starts[-1], "phase_steps": length})
            done = pos.step_in_phase == length
            stop = preemption.requested or (self.max_steps is not None
                                            and pos.global_step >= self.max_steps)
            if stop or done or (every and pos.global_step % every == 0):
                self._save(state, pos, runner, done)
            stopped = stop and not (done and last_phase)
        runner.close()
        if pos.step_in_phase == length:
            records = read_metrics(self.workdir)
            self.plots.append(plot_phase(records, name, self.workdir / f"phase_{name}.png"))
            if hasattr(runner, "plot"):  # e.g. the rl kind's reward/accuracy curves
                self.plots.append(runner.plot(records, self.workdir / f"phase_{name}_rl.png"))
            self.reporter.on_phase_end({"phase": name, "plot": str(self.plots[-1]),
                                        "record": self.last})
            pos.phase_index, pos.step_in_phase, pos.data_state = pos.phase_index + 1, 0, None
        return state, stopped


def run_experiment(cfg, workdir, *, reporter: Reporter | None = None, shard_fn=None,
                   max_steps: int | None = None) -> RunResult:
    """Run (or resume) every phase of `cfg` in `workdir`; `max_steps` stops early (tests)."""
    validate_experiment(cfg)
    workdir = pathlib.Path(workdir)
    _check_workdir(workdir, cfg)
    run = _Run(cfg, workdir, reporter or _Silent(), shard_fn, max_steps)
    state, pos, resume = run.initial_state()
    peak, peak_source = _peak_flops()
    log = MetricsLog(workdir, resume_step=pos.global_step)
    run.reporter.on_start({"phases": run.names, "steps": run.lengths, "resume_step": resume,
                           "peak_flops": peak, "peak_source": peak_source, "workdir": str(workdir)})
    stopped = False
    with _Preemption() as preemption:
        while pos.phase_index < len(run.names) and not stopped:
            state, stopped = run.run_phase(state, pos, log, peak, preemption)
    run.store.wait()
    run.store.close()
    log.close()
    final_model = None
    if not stopped and cfg.checkpoint.get("export_final_model", True):
        final_model = export_final_model(workdir / "final_model", state, cfg.model)
    return RunResult(workdir, pos.global_step, stopped, run.last, run.plots,
                     workdir / "checkpoints", state, run.tokenizer, final_model)


def export_final_model(path: pathlib.Path, state: dict, model_cfg) -> pathlib.Path:
    """The trained model as a model checkpoint (`ling-jax export-hf --checkpoint PATH` reads it)."""
    from ling_jax.interop.model_checkpoint import atomic_output_dir, write_model_dir
    from ling_jax.train.merge_run import model_state

    with atomic_output_dir(path, overwrite=True) as tmp:
        write_model_dir(tmp, model_state(state["params"], state["biases"]), model_cfg)
    return path
