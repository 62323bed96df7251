"""The train state (params, expert biases, optimizer state, step) and its model-checkpoint view."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ling_jax.model.moe import ExpertBias
from ling_jax.model.transformer import LingForCausalLM


def init_state(cfg, optimizer) -> dict:
    """A fresh train state for experiment `cfg` (model from cfg.model, seeded by cfg.seed)."""
    model = LingForCausalLM(cfg.model, rngs=nnx.Rngs(int(cfg.seed)))
    _, params, biases = nnx.split(model, nnx.Param, ExpertBias)
    params, biases = params.to_pure_dict(), biases.to_pure_dict()
    return {"params": params, "biases": biases, "opt_state": optimizer.init(params),
            "step": np.zeros((), np.int32)}


def model_state(params: dict, biases: dict) -> dict:
    """Params and expert biases as one nested dict (the layout of a model checkpoint)."""
    out = dict(params)
    for key, value in biases.items():
        out[key] = model_state(params.get(key, {}), value) if isinstance(value, dict) else value
    return out


@jax.jit
def _finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def all_finite(state: dict) -> bool:
    """Whether every float in params, expert biases and optimizer state is finite (one reduction
    on device; read from this process's copy of the replicated answer)."""
    ok = _finite({k: state[k] for k in ("params", "biases", "opt_state") if k in state})
    return bool(np.asarray(ok.addressable_data(0)))
