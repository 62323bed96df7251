"""The rl phase's compiled functions (sampler, scorer, update), cached by what determines them
(model config JSON and settings), so a runner rebuilt for a resume or another phase with the
same shapes does not compile again."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import ml_collections

from ling_jax.model.decode import SamplingParams, make_generate_fn
from ling_jax.rl.update import UpdateConfig, rl_updates, score_fn
from ling_jax.train.phases import phase_graphdef


@functools.lru_cache(maxsize=16)
def graphdef(model_json: str):
    return phase_graphdef(ml_collections.ConfigDict(json.loads(model_json)))


@functools.lru_cache(maxsize=16)
def generate_fn(model_json: str, slots: int, sampling: SamplingParams, group_size: int = 1):
    """KV-cache sampler of `slots` new tokens (group_size samples per prompt, one prefill each)."""
    return make_generate_fn(graphdef(model_json), max_new_tokens=slots, sampling=sampling,
                            group_size=group_size)


@functools.lru_cache(maxsize=16)
def scoring_fn(model_json: str, prompt_len: int, temperature: float):
    """Training-forward log-probs (and entropy) of the response tokens."""
    return score_fn(graphdef(model_json), prompt_len, temperature)


@dataclasses.dataclass(frozen=True)
class HashedOptimizer:
    """An optax optimizer that hashes by the JSON of what built it."""

    key: str
    optimizer: Any = dataclasses.field(compare=False, hash=False)


@functools.lru_cache(maxsize=16)
def update_fn(model_json: str, uc: UpdateConfig, optimizer: HashedOptimizer):
    """The jitted K objective updates of one RL step (state donated)."""
    fn = functools.partial(rl_updates, graphdef=graphdef(model_json),
                           optimizer=optimizer.optimizer, uc=uc)
    return jax.jit(fn, donate_argnums=(0,))
