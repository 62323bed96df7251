"""Clipped policy-gradient objectives for the RL phase, chosen by name: grpo, gspo, lpo.

    loss, diagnostics = ling_jax.rl.objectives.get("lpo")(
        logp, logp_old, mask, advantages, sentence_ids, eps=0.03, logp_ref=ref, kl_beta=0.01)

Shapes: logp/logp_old/mask/sentence_ids [N, T] (sentence ids -1 outside the response),
advantages [N]. Gradients flow only through logp. See common.Objective for the contract.
"""

from __future__ import annotations

from ling_jax.rl.objectives.common import Diagnostics, Objective, k3_kl_per_token
from ling_jax.rl.objectives.grpo import grpo_loss
from ling_jax.rl.objectives.gspo import gspo_loss
from ling_jax.rl.objectives.lpo import lpo_loss, sentence_mean

OBJECTIVES: dict[str, Objective] = {"grpo": grpo_loss, "gspo": gspo_loss, "lpo": lpo_loss}


def names() -> list[str]:
    """The registered objective names."""
    return sorted(OBJECTIVES)


def get(name: str) -> Objective:
    """The objective registered under `name`; ValueError lists the valid names otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown RL objective {name!r}: choose one of {names()}") from None


__all__ = [
    "OBJECTIVES",
    "Diagnostics",
    "Objective",
    "get",
    "grpo_loss",
    "gspo_loss",
    "k3_kl_per_token",
    "lpo_loss",
    "names",
    "sentence_mean",
]
