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
from ling_jax.train.metrics_log import MetricsLog, read_metrics, to_jsonable
from ling_jax.train.phases import PHASE_KINDS, PhaseContext, make_phase_optimizer
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


def run_experiment(cfg, workdir, *, reporter: Reporter | None = None, shard_fn=None,
                   max_steps: int | None = None) -> RunResult:
    """Run (or resume) every phase of `cfg` in `workdir`; `max_steps` stops early (tests)."""
    validate_experiment(cfg)
    reporter = reporter or _Silent()
    workdir = pathlib.Path(workdir)
    _check_workdir(workdir, cfg)
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.model, workdir)
    names = phase_names(cfg)
    lengths = [phase_steps(cfg.phases[n]) for n in names]
    starts = np.cumsum([0, *lengths]).tolist()
    first_ctx = PhaseContext(cfg, tokenizer, 0, 0)
    abstract = jax.eval_shape(lambda: init_state(cfg, make_phase_optimizer(first_ctx, cfg.phases[names[0]])))
    ck = cfg.checkpoint
    store = CheckpointStore(workdir / "checkpoints", keep=ck.keep, keep_every=ck.keep_every or None,
                            async_save=ck.async_save)
    resume = store.latest_step()
    if resume is None:
        state, meta, data_state = init_state(cfg, make_phase_optimizer(first_ctx, cfg.phases[names[0]])), None, None
        phase_index, step_in_phase = 0, 0
    else:
        state, meta, data_state = store.restore(resume, abstract_state=abstract)
        phase_index, step_in_phase = meta["phase_index"], meta["step_in_phase"]
    global_step = int(starts[phase_index] + step_in_phase)
    peak, peak_source = _peak_flops()
    log = MetricsLog(workdir, resume_step=global_step)
    reporter.on_start({"phases": names, "steps": lengths, "resume_step": resume, "peak_flops": peak,
                       "peak_source": peak_source, "workdir": str(workdir)})
    plots, last, preempted = [], {}, False
    with _Preemption() as preemption:
        while phase_index < len(names) and not preempted:
            name = names[phase_index]
            phase = cfg.phases[name]
            ctx = PhaseContext(cfg, tokenizer, phase_index, starts[phase_index], jax.process_index(),
                               jax.process_count(), shard_fn)
            runner = PHASE_KINDS[phase.kind](ctx, name, phase)
            if data_state is not None and step_in_phase > 0:
                runner.set_data_state(data_state)
            step_flops = flops.training_flops_per_step(runner.model_cfg, phase.seq_len,
                                                       phase.seq_len * phase.batch_size)
            every = phase.checkpoint_every or ck.every_steps
            while step_in_phase < lengths[phase_index]:
                if max_steps is not None and global_step >= max_steps:
                    preempted = True
                    break
                t0 = time.perf_counter()
                state, metrics = runner.step(state)
                metrics = jax.device_get(metrics)
                seconds = time.perf_counter() - t0
                step_in_phase += 1
                global_step += 1
                record = {"phase": name, "step": global_step, "phase_step": step_in_phase,
                          **to_jsonable(metrics), "step_time": seconds,
                          "tokens_per_sec": float(metrics.get("tokens", 0)) / seconds,
                          "mfu": flops.mfu(step_flops, seconds, peak, jax.device_count())}
                log.write(record)
                last = record
                reporter.on_step(record, {"total_steps": starts[-1], "phase_steps": lengths[phase_index]})
                phase_done = step_in_phase == lengths[phase_index]
                if preemption.requested or phase_done or (every and global_step % every == 0):
                    meta = {"phase_index": phase_index + phase_done, "phase": name,
                            "step_in_phase": 0 if phase_done else step_in_phase}
                    store.save(global_step, state, meta,
                               None if phase_done else runner.data_state(), force=True)
                if preemption.requested:
                    preempted = True
                    break
            runner.close()
            if step_in_phase == lengths[phase_index]:
                plots.append(plot_phase(read_metrics(workdir), name, workdir / f"phase_{name}.png"))
                reporter.on_phase_end({"phase": name, "plot": str(plots[-1]), "record": last})
                phase_index, step_in_phase, data_state = phase_index + 1, 0, None
    store.wait()
    store.close()
    log.close()
    return RunResult(workdir, global_step, preempted, last, plots, workdir / "checkpoints", state,
                     tokenizer)
