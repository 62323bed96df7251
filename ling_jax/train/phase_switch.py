"""Phase switching for the train loop: the phase table, which phases a run reaches, the mesh they
run on, and the runner that starts each phase (found by its kind)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import numpy as np
from etils import epath

from ling_jax.parallel.mesh import MESH_AXES, experiment_phases, mesh_spec, validate_mesh
from ling_jax.parallel.sharding import ShardingPlan, plan_for_experiment
from ling_jax.train.experiment import phase_names, phase_steps
from ling_jax.train.metrics_log import is_local
from ling_jax.train.phase_kinds import phase_kind
from ling_jax.train.phases import PhaseContext


@dataclasses.dataclass
class PhaseTable:
    """The experiment's phases in order: names, lengths in steps, and the global step at which
    each begins (then the total)."""

    names: list[str]
    lengths: list[int]
    starts: list[int]

    @classmethod
    def of(cls, cfg) -> PhaseTable:
        names = phase_names(cfg)
        lengths = [phase_steps(cfg.phases[n]) for n in names]
        return cls(names, lengths, np.cumsum([0, *lengths]).tolist())


def phases_to_run(names: list[str], starts: list[int], first: int,
                  max_steps: int | None) -> list[str]:
    """Names of the phases from index `first` up to the one in which global step max_steps falls
    (`starts`: the global step at which each phase begins, then the total)."""
    last = len(names)
    if max_steps is not None:
        last = sum(1 for s in starts[:-1] if s < max_steps)
    return names[first:max(last, first)]


def run_sharding(cfg, table: PhaseTable, shard_fn, first_phase: int, max_steps: int | None,
                 abstract) -> tuple[ShardingPlan | None, Any]:
    """(plan, shard_fn): the plan from cfg.mesh, validated for the phases this run reaches, unless
    the caller passed a shard_fn. `abstract()`: the state's ShapeDtypeStructs."""
    if shard_fn is not None:  # a caller's plan.shard_fn brings its plan (state placement)
        owner = getattr(shard_fn, "__self__", None)
        return (owner if isinstance(owner, ShardingPlan) else None), shard_fn
    block = cfg.get("mesh", None)
    spec = None if block is None else mesh_spec(block, jax.device_count())
    if spec is None or spec.num_devices == 1:
        return None, None  # the single-device path, unchanged
    names = phases_to_run(table.names, table.starts, first_phase, max_steps)
    # Checked before the state is even traced: one line naming the field.
    validate_mesh(spec, cfg.model, device_count=jax.device_count(),
                  phases=[p for p in experiment_phases(cfg) if p[0] in names])
    plan = plan_for_experiment(cfg, abstract(), phases=names)
    return plan, plan.shard_fn


def mesh_description(plan: ShardingPlan | None) -> str:
    """'data=2 × fsdp=2 × expert=2 (rules fsdp_ep)', or 'one device'."""
    if plan is None:
        return "one device"
    shape = dict(plan.mesh.shape)
    axes = " × ".join(f"{a}={shape[a]}" for a in MESH_AXES if shape.get(a, 1) > 1)
    rules = f" (rules {plan.spec.rules})" if plan.spec else ""
    return (axes or "1 device") + rules


def start_phase(cfg, table: PhaseTable, pos, tokenizer, shard_fn, workdir: epath.Path, log,
                plan: ShardingPlan | None = None):
    """The runner of the phase at pos (built by its kind), resumed at pos's data state; under a
    plan, each process reads the batch rows its devices hold."""
    name = table.names[pos.phase_index]
    phase = cfg.phases[name]
    # Phase kinds write with pathlib: a gs:// run gives them the log's local directory.
    local = pathlib.Path(os.fspath(workdir)) if is_local(workdir) else log.local_dir
    ctx = PhaseContext(cfg, tokenizer, pos.phase_index, table.starts[pos.phase_index],
                       jax.process_index(), jax.process_count(), shard_fn, local,
                       plan.local_rows if plan is not None else None,
                       plan.global_batch if plan is not None else None,
                       plan.context if plan is not None else None)
    runner = phase_kind(phase.kind)(ctx, name, phase)
    if pos.data_state is not None and pos.step_in_phase > 0:
        runner.set_data_state(pos.data_state)
    return runner


def next_phase(pos) -> None:
    """Move pos to the start of the following phase."""
    pos.phase_index, pos.step_in_phase, pos.data_state = pos.phase_index + 1, 0, None
