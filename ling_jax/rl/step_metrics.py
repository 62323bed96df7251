"""The metrics an RL step reports about its rollouts (reward, accuracy, length, entropy, ...)."""

from __future__ import annotations

import numpy as np

from ling_jax.rl.evaluation import exact_match


def rollout_metrics(rollouts, problems, group_size: int, rewards, components, batch, entropy,
                    stage, correct=None) -> dict:
    """Means over the step's P × G rollouts; token means over the response mask. correct: [N]
    bool per rollout (default: arithmetic exact match)."""
    mask = np.asarray(batch["mask"])
    tokens = max(int(mask.sum()), 1)
    gap = np.abs(np.asarray(batch["logp_old"]) - rollouts.sampler_logp)
    repeated = [p for p in problems for _ in range(group_size)]
    flat = rewards.reshape(-1)
    out = {
        "reward": float(flat.mean()), "reward_std": float(flat.std()),
        "accuracy": float(np.mean(exact_match(rollouts.texts, repeated) if correct is None
                                  else correct)),
        "response_length": float(rollouts.lengths.mean()),
        "finished_fraction": float(rollouts.finished.mean()),
        "entropy": float(np.asarray(entropy)[mask].sum() / tokens),
        "logp_gap": float(gap[mask].sum() / tokens),
        "flat_groups": float(np.mean(rewards.max(1) == rewards.min(1))),
        "stage": stage.index, "max_response_tokens": stage.max_response_tokens,
        "length_alpha": stage.length_alpha,
        "difficulty": float(np.mean([p.difficulty for p in problems])),
        "tokens": float(rollouts.lengths.sum()),
    }
    out.update({f"reward_{name}": float(v.mean()) for name, v in components.items()})
    return out
