"""The one train loop: runs an experiment's phases in order, with exact resume and checkpoints.

State carried across phases: params, optimizer state, expert biases, global step. Checkpoints
hold that state plus {phase index, step in phase} and the phase's data-iterator state, so a run
killed at any moment resumes from its latest complete checkpoint and reproduces the same losses.

An experiment `mesh` block of more than one device makes the loop build a ShardingPlan
(parallel/): the state is created or restored (from any mesh's checkpoint) with the plan's
shardings and the phases' steps run jitted with them. The workdir may be a gs:// path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import tempfile
import time
from typing import Any, Protocol

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import SingleDeviceSharding

from ling_jax.model.moe import ExpertBias
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.parallel.mesh import MESH_AXES, experiment_phases, mesh_spec, validate_mesh
from ling_jax.parallel.sharding import ShardingPlan, plan_for_experiment, with_shardings
from ling_jax.paths import absolute
from ling_jax.train import flops
from ling_jax.train.checkpoint import CheckpointStore
from ling_jax.train.experiment import phase_names, phase_steps, validate_experiment
from ling_jax.train.fp8_monitor import make_fp8_monitor, monitor_due
from ling_jax.train.metrics_log import MetricsLog, is_local, to_jsonable, upload_tree
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


def _check_workdir(workdir: epath.Path, cfg) -> None:
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


def _host_values(tree):
    """Device metrics → host numpy; replicated arrays of a multi-host mesh read their local copy."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return x
    return jax.device_get(jax.tree.map(one, tree))


def mesh_description(plan: ShardingPlan | None) -> str:
    """'data=2 × fsdp=2 × expert=2 (rules fsdp_ep)', or 'one device'."""
    if plan is None:
        return "one device"
    shape = dict(plan.mesh.shape)
    axes = " × ".join(f"{a}={shape[a]}" for a in MESH_AXES if shape.get(a, 1) > 1)
    rules = f" (rules {plan.spec.rules})" if plan.spec else ""
    return (axes or "1 device") + rules


def phases_to_run(names: list[str], starts: list[int], first: int,
                  max_steps: int | None) -> list[str]:
    """Names of the phases from index `first` up to the one in which global step max_steps falls
    (`starts`: the global step at which each phase begins, then the total)."""
    last = len(names)
    if max_steps is not None:
        last = sum(1 for s in starts[:-1] if s < max_steps)
    return names[first:max(last, first)]


@dataclasses.dataclass
class _Position:
    """Where a run is: phase, step inside it, global step, and the phase's data state."""

    phase_index: int
    step_in_phase: int
    global_step: int
    data_state: dict | None


class _Run:
    """One execution of run_experiment: owns the store, the plan, the metrics log and the steps.

    Built in an order that surfaces every config error before anything compiles: the resume point
    (checkpoint metadata only), then the mesh validated for the phases still to run, then the
    workdir check, and only then the tokenizer.
    """

    def __init__(self, cfg, workdir: epath.Path, reporter: Reporter, shard_fn,
                 max_steps: int | None):
        self.cfg, self.workdir, self.reporter = cfg, workdir, reporter
        self.max_steps, self.primary = max_steps, jax.process_index() == 0
        self.names = phase_names(cfg)
        self.lengths = [phase_steps(cfg.phases[n]) for n in self.names]
        self.starts = np.cumsum([0, *self.lengths]).tolist()
        self.optimizer = make_phase_optimizer(PhaseContext(cfg, None, 0, 0),
                                              cfg.phases[self.names[0]])
        self._abstract = None
        self.store = self._open_store() if (workdir / "checkpoints").exists() else None
        try:
            self.resume = self.store.latest_step() if self.store else None
            meta = self.store.read_meta(self.resume)[0] if self.resume is not None else {}
            self.plan, self.shard_fn = self._sharding(shard_fn, int(meta.get("phase_index", 0)))
            if self.primary:  # the other hosts would race its write
                _check_workdir(workdir, cfg)
        except BaseException:
            if self.store is not None:
                self.store.close()
            raise
        self.store = self.store or self._open_store()
        self.tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, workdir)
        self.plots: list[epath.Path] = []
        self.last: dict = {}

    def _open_store(self) -> CheckpointStore:
        ck = self.cfg.checkpoint
        return CheckpointStore(self.workdir / "checkpoints", keep=ck.keep,
                               keep_every=ck.keep_every or None, async_save=ck.async_save)

    @property
    def abstract(self):
        """ShapeDtypeStructs of the train state (traced once, nothing allocated)."""
        if self._abstract is None:
            self._abstract = jax.eval_shape(lambda: init_state(self.cfg, self.optimizer))
        return self._abstract

    def _sharding(self, shard_fn, first_phase: int) -> tuple[ShardingPlan | None, Any]:
        """The plan from cfg.mesh (validated here) unless the caller passed a shard_fn."""
        if shard_fn is not None:  # a caller's plan.shard_fn brings its plan (state placement)
            owner = getattr(shard_fn, "__self__", None)
            return (owner if isinstance(owner, ShardingPlan) else None), shard_fn
        block = self.cfg.get("mesh", None)
        spec = None if block is None else mesh_spec(block, jax.device_count())
        if spec is None or spec.num_devices == 1:
            return None, None  # the single-device path, unchanged
        names = phases_to_run(self.names, self.starts, first_phase, self.max_steps)
        # Checked before the state is even traced: one line naming the field.
        validate_mesh(spec, self.cfg.model, device_count=jax.device_count(),
                      phases=[p for p in experiment_phases(self.cfg) if p[0] in names])
        plan = plan_for_experiment(self.cfg, self.abstract, phases=names)
        return plan, plan.shard_fn

    def initial_state(self) -> tuple[dict, _Position]:
        """A fresh state (created sharded under a plan), or the latest checkpoint's, restored
        straight onto this run's shardings (whatever mesh wrote it)."""
        if self.resume is None:
            make = lambda: init_state(self.cfg, self.optimizer)  # noqa: E731
            state = self.plan.init(make) if self.plan else make()
            return state, _Position(0, 0, 0, None)
        if self.plan is not None:
            target = self.plan.abstract(self.abstract)
        else:
            one = SingleDeviceSharding(jax.devices()[0])
            target = with_shardings(self.abstract, jax.tree.map(lambda _: one, self.abstract))
        state, meta, data_state = self.store.restore(self.resume, abstract_state=target)
        index, step = meta["phase_index"], meta["step_in_phase"]
        return state, _Position(index, step, int(self.starts[index] + step), data_state)

    def _save(self, state, pos: _Position, runner, phase_done: bool, log) -> None:
        meta = {"phase_index": pos.phase_index + phase_done, "phase": self.names[pos.phase_index],
                "step_in_phase": 0 if phase_done else pos.step_in_phase}
        data = None if phase_done else runner.data_state()
        self.store.save(pos.global_step, state, meta, data, force=True)
        log.sync()

    def _record(self, name, pos, metrics, seconds, step_flops, peak) -> dict:
        return {"phase": name, "step": pos.global_step, "phase_step": pos.step_in_phase,
                **to_jsonable(metrics), "step_time": seconds,
                "tokens_per_sec": float(metrics.get("tokens", 0)) / seconds,
                "mfu": flops.mfu(step_flops, seconds, peak, jax.device_count())}

    def run_phase(self, state, pos: _Position, log: MetricsLog, peak: float,
                  preemption: _Preemption) -> tuple[dict, bool]:
        """Steps of the current phase from pos; returns (state, stopped early)."""
        name = self.names[pos.phase_index]
        phase = self.cfg.phases[name]
        # Phase kinds write with pathlib: a gs:// run gives them the log's local directory.
        local = pathlib.Path(os.fspath(self.workdir)) if is_local(self.workdir) else log.local_dir
        ctx = PhaseContext(self.cfg, self.tokenizer, pos.phase_index, self.starts[pos.phase_index],
                           jax.process_index(), jax.process_count(), self.shard_fn, local,
                           self.plan.local_rows if self.plan else None)
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
            metrics = _host_values(metrics)
            seconds = time.perf_counter() - t0
            pos.step_in_phase += 1
            pos.global_step += 1
            self.last = self._record(name, pos, metrics, seconds, step_flops, peak)
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
                self._save(state, pos, runner, done, log)
            stopped = stop and not (done and last_phase)
        runner.close()
        if pos.step_in_phase == length:
            self._plot(runner, name, log)
            pos.phase_index, pos.step_in_phase, pos.data_state = pos.phase_index + 1, 0, None
        return state, stopped

    def _plot(self, runner, name: str, log) -> None:
        """End-of-phase plots, drawn in the log's local directory and synced to the workdir."""
        if self.primary:
            records = log.records()
            plot_phase(records, name, log.local_dir / f"phase_{name}.png")
            self.plots.append(self.workdir / f"phase_{name}.png")
            if hasattr(runner, "plot"):  # e.g. the rl kind's reward/accuracy curves
                runner.plot(records, log.local_dir / f"phase_{name}_rl.png")
                self.plots.append(self.workdir / f"phase_{name}_rl.png")
            log.sync()
        self.reporter.on_phase_end({"phase": name, "plot": str(self.plots[-1]) if self.plots
                                    else "", "record": self.last})


class _NoLog:
    """Processes other than 0 log nothing (they compute the same replicated metrics)."""

    def __init__(self):
        self.local_dir = pathlib.Path(tempfile.gettempdir())

    def write(self, record): pass
    def records(self): return []
    def sync(self): pass
    def close(self): pass


def run_experiment(cfg, workdir, *, reporter: Reporter | None = None, shard_fn=None,
                   max_steps: int | None = None) -> RunResult:
    """Run (or resume) every phase of `cfg` in `workdir` (local or gs://); `max_steps` stops early.

    With a `mesh` block of more than one device (and no `shard_fn`), the state is created or
    restored sharded on that mesh and every step runs jitted with its shardings. Config and mesh
    errors are raised before anything compiles.
    """
    validate_experiment(cfg)
    workdir = absolute(workdir)  # relative workdirs resolve against the cwd, once
    run = _Run(cfg, workdir, reporter or _Silent(), shard_fn, max_steps)
    state, pos = run.initial_state()
    peak, peak_source = _peak_flops()
    log = MetricsLog(workdir, resume_step=pos.global_step) if run.primary else _NoLog()
    run.reporter.on_start({"phases": run.names, "steps": run.lengths, "resume_step": run.resume,
                           "peak_flops": peak, "peak_source": peak_source, "workdir": str(workdir),
                           "mesh": mesh_description(run.plan)})
    stopped = False
    with _Preemption() as preemption:
        while pos.phase_index < len(run.names) and not stopped:
            state, stopped = run.run_phase(state, pos, log, peak, preemption)
    run.store.wait()
    run.store.close()
    log.close()
    final_model = None
    if (not stopped and cfg.checkpoint.get("export_final_model", True) and run.primary
            and jax.process_count() == 1):  # multi-host: convert a checkpoint afterwards
        final_model = export_final_model(workdir / "final_model", state, cfg.model, run.tokenizer)
    return RunResult(workdir, pos.global_step, stopped, run.last, run.plots,
                     workdir / "checkpoints", state, run.tokenizer, final_model, run.plan)


def export_final_model(path: str | os.PathLike, state: dict, model_cfg,
                       tokenizer: Any = None) -> epath.Path:
    """The trained model as a model checkpoint (`ling-jax export-hf --checkpoint PATH` and
    `ling-jax generate --checkpoint PATH` read it) with the run's tokenizer.json beside it when the
    tokenizer can be saved; a gs:// path is written locally first, then copied."""
    from ling_jax.interop.model_checkpoint import atomic_output_dir, write_model_dir
    from ling_jax.train.merge_run import model_state

    tree = model_state(state["params"], state["biases"])

    def write(tmp: pathlib.Path) -> None:
        write_model_dir(tmp, tree, model_cfg)
        if hasattr(tokenizer, "save"):
            tokenizer.save(tmp / "tokenizer.json")

    if is_local(path):
        with atomic_output_dir(path, overwrite=True) as tmp:
            write(pathlib.Path(tmp))
        return epath.Path(path)
    target = epath.Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        write(pathlib.Path(tmp))
        if target.exists():
            target.rmtree()
        upload_tree(pathlib.Path(tmp), target)
    return target
