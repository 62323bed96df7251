"""Which rollout groups a process samples and scores under a mesh, and how their scores are shared.

The N = P × G rollout rows of an RL step are laid out like any batch: each process holds the rows
its devices hold, which must be whole groups of G. It samples them, scores its own groups (code runs
in the sandbox once, on one process), and the [P, G] scores are then shared so that every process
builds the same advantages and metrics. With one process every helper here is the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ling_jax.train.multihost import gather_json


def process_rows(rows_fn: Callable[[int], list[int]] | None, n: int, group_size: int,
                 phase: str) -> np.ndarray:
    """The rollout rows this process generates (ascending): whole groups."""
    rows = np.asarray(rows_fn(n) if rows_fn else range(n), np.int64)
    if rows.size != np.unique(rows // group_size).size * group_size:
        raise ValueError(f"phases.{phase}: a process holds part of a group of {group_size} "
                         "rollouts; make group_size × batch_size rows split into whole groups "
                         "per batch shard")
    return rows


def place(place_batch: Callable[[dict], dict] | None, batch: dict) -> dict:
    """Host arrays of this process's rows -> the step's inputs (global arrays on a mesh)."""
    if place_batch is None:
        return {f: jnp.asarray(x) for f, x in batch.items()}
    return place_batch(batch)


def place_prompts(place_batch, rows_fn, ids: np.ndarray, lengths: np.ndarray, rows: np.ndarray,
                  group_size: int, phase: str) -> dict:
    """The sampler's [P, ...] prompt inputs (it decodes G samples of each): with several
    processes, each passes the prompts of its own groups."""
    if jax.process_count() == 1:
        return {"ids": jnp.asarray(ids), "lengths": jnp.asarray(lengths)}
    groups = np.unique(rows // group_size)
    if not np.array_equal(groups, np.asarray(rows_fn(len(ids)))):
        raise ValueError(f"phases.{phase}.batch_size={len(ids)} prompts must split evenly over "
                         "the batch shards of the mesh when several processes sample")
    return place(place_batch, {"ids": ids[groups], "lengths": lengths[groups]})


def own_groups(rows: np.ndarray, group_size: int) -> tuple[list[int], np.ndarray]:
    """(the groups of `rows`, all of their rows in group order)."""
    groups = [int(p) for p in np.unique(rows // group_size)]
    return groups, np.concatenate([np.arange(p * group_size, (p + 1) * group_size)
                                   for p in groups])


def share_scores(groups: list[int], num_groups: int, rewards, components: dict, correct):
    """Every process's [len(groups), G] rewards / components and [len(groups) × G] correct flags
    -> the whole step's [P, G] rewards and components and [N] correct (a no-op when this process
    scored every group)."""
    g = np.asarray(rewards).shape[1]
    if jax.process_count() == 1 and len(groups) == num_groups:
        return rewards, components, correct
    full_r = np.zeros((num_groups, g), np.float64)
    full_c = {name: np.zeros((num_groups, g), np.float64) for name in components}
    full_ok = np.zeros((num_groups, g), bool)
    shared = gather_json({"groups": groups, "rewards": np.asarray(rewards).tolist(),
                          "correct": np.asarray(correct).reshape(-1, g).tolist(),
                          "components": {c: np.asarray(v).tolist()
                                         for c, v in components.items()}})
    for part in shared:
        full_r[part["groups"]] = part["rewards"]
        full_ok[part["groups"]] = part["correct"]
        for name, v in part["components"].items():
            full_c[name][part["groups"]] = v
    return (full_r.astype(np.asarray(rewards).dtype),
            {c: v.astype(np.asarray(components[c]).dtype) for c, v in full_c.items()},
            full_ok.reshape(-1))
