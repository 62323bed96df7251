"""Checkpoint/resume for the train loop: the store, the resume point, the initial state, saves.

Checkpoints hold the train state plus {phase index, step in phase} and the phase's data-iterator
state, so a run killed at any moment resumes from its latest complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax
from absl import logging
from etils import epath
from jax.sharding import SingleDeviceSharding

from ling_jax.data.pipeline import merge_data_states
from ling_jax.parallel.sharding import ShardingPlan, with_shardings
from ling_jax.train import multihost
from ling_jax.train.checkpoint import CheckpointStore
from ling_jax.train.checkpoint_manifest import CheckpointCorruptError
from ling_jax.train.state import init_state


@dataclasses.dataclass
class Position:
    """Where a run is: phase, step inside it, global step, and the phase's data state."""

    phase_index: int
    step_in_phase: int
    global_step: int
    data_state: dict | None


def open_store(cfg, workdir: epath.Path) -> CheckpointStore:
    """The run's checkpoint store under WORKDIR/checkpoints, with the experiment's keep policy."""
    ck = cfg.checkpoint
    return CheckpointStore(workdir / "checkpoints", keep=ck.keep,
                           keep_every=ck.keep_every or None, async_save=ck.async_save)


def resume_point(store: CheckpointStore | None,
                 restore_step: int | None = None) -> tuple[int | None, dict]:
    """(checkpoint step to resume from, its metadata), or (None, {}) for a fresh run.

    Default: the newest intact checkpoint (a corrupt or partial newest one is reported in one
    warning line naming it and the step used instead; nothing is deleted). `restore_step`: that
    step, verified (one-line CheckpointCorruptError if it is damaged or missing)."""
    if store is None:
        if restore_step is not None:
            raise ValueError(f"--restore_step={restore_step}: the workdir has no checkpoints")
        return None, {}
    if restore_step is not None:
        problem = store.verify(int(restore_step))
        if problem:
            raise CheckpointCorruptError(problem)
        resume = int(restore_step)
    else:
        resume, note = store.newest_intact_step()
        if note:
            logging.warning("%s", note)
    meta = store.read_meta(resume)[0] if resume is not None else {}
    return resume, meta


def check_workdir(workdir: epath.Path, cfg) -> None:
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


def initial_state(cfg, optimizer, store: CheckpointStore, resume: int | None,
                  plan: ShardingPlan | None, abstract: Callable[[], Any],
                  starts: list[int]) -> tuple[dict, Position]:
    """A fresh state (created sharded under a plan), or the `resume` checkpoint's, restored
    straight onto this run's shardings (whatever mesh wrote it). `abstract()`: the state's
    ShapeDtypeStructs."""
    if resume is None:
        make = lambda: init_state(cfg, optimizer)  # noqa: E731
        state = plan.init(make) if plan else make()
        return state, Position(0, 0, 0, None)
    if plan is not None:
        target = plan.abstract(abstract())
    else:
        one, tree = SingleDeviceSharding(jax.devices()[0]), abstract()
        target = with_shardings(tree, jax.tree.map(lambda _: one, tree))
    # resume_point verified the step's files against its manifest already: read them once more,
    # not twice.
    state, meta, data_state = store.restore(resume, abstract_state=target, verify=False)
    index, step = meta["phase_index"], meta["step_in_phase"]
    return state, Position(index, step, int(starts[index] + step), data_state)


def save(store: CheckpointStore, state, pos: Position, names: list[str], runner,
         phase_done: bool, log) -> None:
    """Checkpoint `state` at pos (a finished phase resumes at the next one) and sync the log."""
    meta = {"phase_index": pos.phase_index + phase_done, "phase": names[pos.phase_index],
            "step_in_phase": 0 if phase_done else pos.step_in_phase}
    data = None if phase_done else gathered_data_state(runner.data_state())
    store.save(pos.global_step, state, meta, data, force=True)
    log.sync()


def gathered_data_state(state: dict | None) -> dict | None:
    """The data state of every process in one (each reads its own rows; the checkpoint keeps the
    union so that any process count resumes from it). One process: `state` itself."""
    states = multihost.gather_json(state)
    if all(s == states[0] for s in states):  # e.g. the rl kind's counters: the same everywhere
        return states[0]
    return merge_data_states(states)
