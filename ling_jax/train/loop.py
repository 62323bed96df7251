"""The one train loop: runs an experiment's phases in order, with exact resume and checkpoints.

State carried across phases: params, optimizer state, expert biases, global step. Checkpoints
hold that state plus {phase index, step in phase} and the phase's data-iterator state, so a run
killed at any moment resumes from its latest complete checkpoint and reproduces the same losses.

An experiment `mesh` block of more than one device makes the loop build a ShardingPlan
(parallel/): the state is created or restored (from any mesh's checkpoint) with the plan's
shardings and the phases' steps run jitted with them. The workdir may be a gs:// path.

The loop's helpers, one job each: train/state.py (the state), train/resume.py (checkpoint and
resume), train/phase_switch.py (phase table, mesh, the runner of each phase), train/reporting.py
(reporter, step records, plots), train/export.py (the final model checkpoint).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
from absl import logging
from etils import epath

from ling_jax.parallel.sharding import ShardingPlan
from ling_jax.paths import absolute
from ling_jax.train import flops, phase_switch, reporting, resume, run_control
from ling_jax.train.experiment import validate_experiment
from ling_jax.train.export import export_final_model
from ling_jax.train.fp8_monitor import make_fp8_monitor, monitor_due
from ling_jax.train.metrics_log import MetricsLog, is_local
from ling_jax.train.phase_switch import PhaseTable, mesh_description, phases_to_run
from ling_jax.train.phases import PhaseContext, make_phase_optimizer
from ling_jax.train.profiling import StepProfiler
from ling_jax.train.reporting import Reporter
from ling_jax.train.resume import Position
from ling_jax.train.state import all_finite, init_state
from ling_jax.train.tokenizer_setup import build_tokenizer
from ling_jax.train.workdir_lock import WorkdirLock

__all__ = ["Reporter", "RunResult", "export_final_model", "init_state", "mesh_description",
           "phases_to_run", "run_experiment"]


@dataclasses.dataclass
class RunResult:
    workdir: epath.Path  # local or gs://
    global_step: int
    preempted: bool
    final_metrics: dict
    plots: list[epath.Path]
    checkpoint_dir: epath.Path
    state: dict  # final train state (params, biases, opt_state, step); sharded under a mesh
    tokenizer: Any
    final_model: epath.Path | None = None  # model checkpoint of the final state
    plan: ShardingPlan | None = None  # the mesh and shardings the run used (None: one device)
    stop_reason: str = run_control.FINISHED  # finished | max_steps | preempted | interrupted
    time_split: str = ""  # goodput: steps / data / checkpoints / other, as text


class _Run:
    """One execution of run_experiment: owns the store, the plan, the metrics log and the steps.

    Built in an order that surfaces every config error before anything compiles: the resume point
    (checkpoint metadata only), then the mesh validated for the phases still to run, then the
    workdir check, and only then the tokenizer.
    """

    def __init__(self, cfg, workdir: epath.Path, reporter: Reporter, shard_fn,
                 max_steps: int | None, restore_step: int | None = None):
        self.cfg, self.workdir, self.reporter = cfg, workdir, reporter
        self.max_steps, self.primary = max_steps, jax.process_index() == 0
        self.table = PhaseTable.of(cfg)
        self.optimizer = make_phase_optimizer(PhaseContext(cfg, None, 0, 0),
                                              cfg.phases[self.table.names[0]])
        self._abstract, self.lock = None, None
        has_store = (workdir / "checkpoints").exists()
        self.store = None
        try:
            if has_store:
                # An existing run: lock before opening its store (opening one tidies temporary
                # save directories, which must not happen under another live run's save).
                self.lock = _take_lock(workdir)
                self.store = resume.open_store(cfg, workdir)
            self.resume, meta = resume.resume_point(self.store, restore_step)
            first = int(meta.get("phase_index", 0))
            self.plan, self.shard_fn = phase_switch.run_sharding(
                cfg, self.table, shard_fn, first, max_steps, lambda: self.abstract)
            if self.primary:  # the other hosts would race its write
                self.lock = self.lock or _take_lock(workdir)
                resume.check_workdir(workdir, cfg)
        except BaseException:
            if self.store is not None:
                self.store.close()
            if self.lock is not None:
                self.lock.release()
            raise
        self.store = self.store or resume.open_store(cfg, workdir)
        self.tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, workdir)
        self.plots: list[epath.Path] = []
        self.last: dict = {}
        self.saved = self.resume  # the newest checkpoint step (None: none yet)
        self.guard = run_control.NonFiniteGuard(int(cfg.get("nonfinite_limit", 3)))
        self.time_split = run_control.TimeSplit()
        self.stop_reason = run_control.FINISHED
        self.profiler = StepProfiler(None, workdir / "profile")

    @property
    def abstract(self):
        """ShapeDtypeStructs of the train state (traced once, nothing allocated)."""
        if self._abstract is None:
            self._abstract = jax.eval_shape(lambda: init_state(self.cfg, self.optimizer))
        return self._abstract

    def initial_state(self) -> tuple[dict, Position]:
        """A fresh state or the latest checkpoint's, on this run's shardings."""
        return resume.initial_state(self.cfg, self.optimizer, self.store, self.resume, self.plan,
                                    lambda: self.abstract, self.table.starts)

    def _save(self, state, pos: Position, runner, done: bool, log) -> None:
        """Checkpoint, unless the state is not finite (then stop: nothing bad is ever saved)."""
        if not all_finite(state):
            raise run_control.NonFiniteError(
                f"step {pos.global_step}: the train state holds non-finite values and was not "
                f"saved; the last checkpoint is step {self.saved}")
        resume.save(self.store, state, pos, self.table.names, runner, done, log)
        self.saved = pos.global_step

    def run_phase(self, state, pos: Position, log, peak: float,
                  requests: run_control.StopRequests) -> tuple[dict, bool]:
        """Steps of the current phase from pos; returns (state, stopped early)."""
        cfg, table = self.cfg, self.table
        name = table.names[pos.phase_index]
        phase = cfg.phases[name]
        runner = phase_switch.start_phase(cfg, table, pos, self.tokenizer, self.shard_fn,
                                          self.workdir, log, self.plan)
        step_flops = flops.training_flops_per_step(runner.model_cfg, phase.seq_len,
                                                   phase.seq_len * phase.batch_size)
        every = phase.checkpoint_every or cfg.checkpoint.every_steps
        length, last_phase = table.lengths[pos.phase_index], pos.phase_index == len(table.names) - 1
        monitor_every = int(cfg.get("fp8_monitor_every", 0))
        monitor = make_fp8_monitor(runner.model_cfg) if monitor_every else None
        stopped = self.max_steps is not None and pos.global_step >= self.max_steps
        while pos.step_in_phase < length and not stopped:
            self.profiler.before(pos.global_step + 1)
            t0 = time.perf_counter()
            state, metrics = runner.step(state)
            metrics = reporting.host_values(metrics)
            seconds = time.perf_counter() - t0
            pos.step_in_phase += 1
            pos.global_step += 1
            self.profiler.after(pos.global_step)
            self.last = reporting.step_record(name, pos, metrics, seconds, step_flops, peak)
            data_wait = getattr(runner, "data_seconds", 0.0)
            self.last.update(time_data=data_wait, time_step=seconds - data_wait)
            self.guard.check(self.last, self.saved)
            if monitor and getattr(runner, "last_batch", None) is not None and monitor_due(
                    pos.global_step, monitor_every):
                # Two rows suffice for statistics; the monitor runs the layers unrolled.
                rows = jax.tree.map(lambda x: x[:2], runner.last_batch)
                self.last.update(monitor(state["params"], state["biases"], rows))
            done = pos.step_in_phase == length
            self.stop_reason = requests.agreed() or self.stop_reason
            at_max = self.max_steps is not None and pos.global_step >= self.max_steps
            stop = at_max or requests.reason is not None
            if stop or done or (every and pos.global_step % every == 0):
                t1 = time.perf_counter()
                self._save(state, pos, runner, done, log)
                self.last["time_checkpoint"] = time.perf_counter() - t1
            self.time_split.add(self.last)
            log.write(self.last)
            self.reporter.on_step(self.last, {"total_steps": table.starts[-1],
                                              "phase_steps": length})
            stopped = stop and not (done and last_phase)
            if stopped and requests.reason is None:
                self.stop_reason = run_control.MAX_STEPS
        runner.close()
        if pos.step_in_phase == length:
            reporting.plot_phase_end(runner, name, log, self.workdir, self.plots, self.primary,
                                     self.reporter, self.last)
            phase_switch.next_phase(pos)
        return state, stopped


def run_experiment(cfg, workdir, *, reporter: Reporter | None = None, shard_fn=None,
                   max_steps: int | None = None,
                   profile_steps: tuple[int, int] | None = None,
                   restore_step: int | None = None) -> RunResult:
    """Run (or resume) every phase of `cfg` in `workdir` (local or gs://); `max_steps` stops early.

    With a `mesh` block of more than one device (and no `shard_fn`), the state is created or
    restored sharded on that mesh and every step runs jitted with its shardings. Config and mesh
    errors are raised before anything compiles. One run per workdir: process 0 holds a lock file
    in a local workdir while it runs. `profile_steps` (A, B): a profiler trace of global steps
    A..B under WORKDIR/profile/host_<i>. Resumes from the newest intact checkpoint (a damaged
    newest one is reported and skipped), or from `restore_step`.
    """
    validate_experiment(cfg)
    workdir = absolute(workdir)  # relative workdirs resolve against the cwd, once
    return _run(cfg, workdir, reporter, shard_fn, max_steps, profile_steps, restore_step)


def _take_lock(workdir: epath.Path) -> WorkdirLock | None:
    """Process 0 locks a local workdir (after every config check, before the first write)."""
    if jax.process_index() != 0 or not is_local(workdir):
        return None
    lock = WorkdirLock(workdir).acquire()
    if lock.stale_owner:
        logging.warning("took over the stale lock of %s (that process is gone)", lock.stale_owner)
    return lock


def _run(cfg, workdir: epath.Path, reporter, shard_fn, max_steps, profile_steps,
         restore_step) -> RunResult:
    t_start = time.perf_counter()
    run = _Run(cfg, workdir, reporter or reporting.Silent(), shard_fn, max_steps, restore_step)
    run.profiler = StepProfiler(profile_steps, workdir / "profile")
    state, pos = run.initial_state()
    peak, peak_source = reporting.peak_flops()
    log = MetricsLog(workdir, resume_step=pos.global_step) if run.primary else reporting.NoLog()
    run.reporter.on_start({"phases": run.table.names, "steps": run.table.lengths,
                           "resume_step": run.resume, "peak_flops": peak,
                           "peak_source": peak_source, "workdir": str(workdir),
                           "mesh": mesh_description(run.plan)})
    stopped = False
    try:
        if run.lock is None and run.primary:
            run.lock = _take_lock(workdir)
        with run_control.StopRequests() as requests:
            while pos.phase_index < len(run.table.names) and not stopped:
                state, stopped = run.run_phase(state, pos, log, peak, requests)
    finally:
        run.profiler.stop()
        run.store.wait()
        run.store.close()
        log.close()
        if run.lock is not None:
            run.lock.release()
    final_model = None
    if not stopped and cfg.checkpoint.get("export_final_model", True):
        # Every process writes its shards; process 0 the config and tokenizer.
        final_model = export_final_model(workdir / "final_model", state, cfg.model, run.tokenizer)
    split = run.time_split.summary(time.perf_counter() - t_start)
    return RunResult(workdir, pos.global_step, run.stop_reason == run_control.PREEMPTED,
                     run.last, run.plots, workdir / "checkpoints", state, run.tokenizer,
                     final_model, run.plan, run.stop_reason if stopped else run_control.FINISHED,
                     split)
