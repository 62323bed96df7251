"""Merge a run's train checkpoints into one model checkpoint (WSM; used by merge-checkpoints)."""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np

from ling_jax.interop.model_checkpoint import atomic_output_dir, check_output_dir, write_model_dir
from ling_jax.train.checkpoint import CheckpointStore
from ling_jax.train.experiment import phase_names
from ling_jax.train.merge import merge_pytrees, profile_coefficients, uniform_coefficients
from ling_jax.train.phases import PhaseContext, make_phase_optimizer
from ling_jax.train.state import init_state, model_state


def load_experiment(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    path = workdir / "experiment.json"
    if not path.is_file():
        raise ValueError(f"{path}: not found; --workdir must be a `ling-jax train` run directory")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def merge_run_checkpoints(workdir: pathlib.Path, *, out: pathlib.Path, steps: list[int] | None,
                          last_n: int, weights: str, overwrite: bool = False):
    """Returns (coefficients, merged steps, output path)."""
    check_output_dir(out, overwrite=overwrite)  # fail before reading anything
    cfg = load_experiment(workdir)
    store = CheckpointStore(workdir / "checkpoints")
    available = store.all_steps()
    if steps is None:
        if last_n < 1:
            raise ValueError(f"--last_n must be >= 1, got {last_n}")
        steps = available[-last_n:]
    missing = sorted(set(steps) - set(available))
    if missing or not steps:
        raise ValueError(f"checkpoint step(s) {missing or steps} not in {workdir / 'checkpoints'} "
                         f"(available: {available})")
    steps = sorted(steps)
    coeffs = (uniform_coefficients(len(steps)) if weights == "uniform"
              else profile_coefficients(weights, len(steps)))
    first = cfg.phases[phase_names(cfg)[0]]
    abstract = jax.eval_shape(lambda: init_state(cfg, make_phase_optimizer(
        PhaseContext(cfg, None, 0, 0), first)))
    # Restored onto this host's first device, whatever processes and mesh wrote the checkpoints.
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
                            abstract)
    trees = []
    for step in steps:
        state, _, _ = store.restore(step, abstract_state=abstract)
        trees.append(model_state(state["params"], state["biases"]))
    store.close()
    merged = jax.tree.map(np.asarray, merge_pytrees(trees, coeffs))
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_model_dir(tmp, merged, cfg.model)
    return [float(c) for c in coeffs], steps, out
