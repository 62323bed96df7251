"""The rl phase's optimizer: the experiment's AdamW with the phase's overrides, its schedule in
optimizer updates, and the optimizer state the phase starts from."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ling_jax.train.experiment import phase_schedule, phase_steps
from ling_jax.train.optimizer import make_optimizer
from ling_jax.train.phases import PhaseContext
from ling_jax.train.schedules import make_schedule


def optimizer_config(ctx: PhaseContext, rl: dict) -> dict:
    """The experiment's AdamW fields with the phase's `rl.optimizer` overrides."""
    return {**ctx.experiment.optimizer.to_dict(), **(rl["optimizer"] or {})}


def phase_optimizer(ctx: PhaseContext, phase, rl: dict, updates_per_step: int, reset: bool):
    """AdamW whose schedule counts optimizer updates (K per RL step) from the phase start: from 0
    when the phase starts from a fresh optimizer state, else from the carried update count."""
    lr = phase_schedule(phase, phase_steps(phase) * updates_per_step)
    lr["start_step"] = 0 if reset else ctx.start_step
    return make_optimizer(optimizer_config(ctx, rl), make_schedule(lr))


def with_hyperparams(opt_state, overrides: dict):
    """A carried optax state whose injected hyperparameters (b1, b2, eps, weight_decay) take
    `overrides`: inject_hyperparams reads them from the state, not from the new optimizer."""
    def one(node):
        if not hasattr(node, "hyperparams"):
            return node
        new = {k: jnp.asarray(overrides[k], jnp.result_type(v)) if k in overrides else v
               for k, v in node.hyperparams.items()}
        return node._replace(hyperparams=new)

    is_inject = lambda x: hasattr(x, "hyperparams") and hasattr(x, "count")
    return jax.tree.map(one, opt_state, is_leaf=is_inject)


def phase_start_opt_state(optimizer, rl: dict, state: dict):
    """Fresh AdamW moments (reset_optimizer), else the carried state with this phase's
    hyperparameter overrides written in."""
    if rl["reset_optimizer"]:
        return optimizer.init(state["params"])
    overrides = {k: v for k, v in (rl["optimizer"] or {}).items() if k != "max_grad_norm"}
    return with_hyperparams(state["opt_state"], overrides)
