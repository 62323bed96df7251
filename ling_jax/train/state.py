"""The train state (params, expert biases, optimizer state, step) and its model-checkpoint view."""

from __future__ import annotations

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
