"""The frozen reference policy of an rl phase with kl_beta > 0: the phase-start (params, biases),
saved under the workdir so that a resumed run scores against the same policy."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

REFERENCE_DIR = "rl_reference_{name}"


def reference_policy(workdir, name: str, state: dict, step_in_phase: int) -> tuple:
    """(params, biases) of phase `name`'s start: restored from the workdir when saved there,
    else saved now from `state` (only at the phase's first step)."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(workdir).absolute() / REFERENCE_DIR.format(name=name)
    tree = {"params": state["params"], "biases": state["biases"]}
    with ocp.StandardCheckpointer() as ckpt:
        if path.exists():
            # Onto the live state's shardings: the run may resume on another mesh or process count.
            target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                 sharding=x.sharding), tree)
            tree = ckpt.restore(path, target)
        elif step_in_phase == 0:
            tree = jax.tree.map(jnp.copy, tree)
            ckpt.save(path, tree)
            ckpt.wait_until_finished()
        else:
            raise ValueError(f"{path}: the reference policy of phase {name!r} is missing; "
                             "resume in the run's original workdir")
    return tree["params"], tree["biases"]
