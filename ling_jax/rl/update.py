"""The RL optimizer updates: K = epochs × minibatches clipped-objective steps in one jitted scan.

Each update: full forward of a minibatch (whole groups) → log π(response) at temperature T →
objective (grpo / gspo / lpo, + β·k3 KL to the reference when given) → AdamW → expert-bias update
from that forward's routing counts (MoE stack, then MTP layers; reference §4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ling_jax.rl import objectives
from ling_jax.rl.objectives import k3_kl_per_token
from ling_jax.rl.rollout import response_logprobs
from ling_jax.train.optimizer import current_lr, global_norm
from ling_jax.train.step import keep_if_finite, update_biases


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    objective: str  # a name of ling_jax.rl.objectives
    objective_kwargs: tuple[tuple[str, Any], ...]  # eps / eps_high when set
    temperature: float
    prompt_len: int
    bias_update_rate: float
    num_moe: int
    kl_beta: float


def score_fn(graphdef, prompt_len: int, temperature: float):
    """jit(params, biases, batch) -> (logp [N,R], entropy [N,R]) under those params (no MTP
    layers: nothing here reads them)."""

    def run(params, biases, batch):
        model = nnx.merge(graphdef, params, biases)
        logp, entropy, _ = response_logprobs(model, batch["tokens"], batch["positions"],
                                             batch["segment_ids"], batch["response"],
                                             prompt_len, temperature, mtp=False)
        return logp, entropy

    return jax.jit(run)


def _loss(params, biases, mb: dict, graphdef, uc: UpdateConfig):
    model = nnx.merge(graphdef, params, biases)
    logp, _, counts = response_logprobs(model, mb["tokens"], mb["positions"], mb["segment_ids"],
                                        mb["response"], uc.prompt_len, uc.temperature)
    logp_ref = mb.get("logp_ref")
    loss, diag = objectives.get(uc.objective)(logp, mb["logp_old"], mb["mask"], mb["advantages"],
                              mb["sentence_ids"], logp_ref=logp_ref, kl_beta=uc.kl_beta,
                              **dict(uc.objective_kwargs))
    valid = mb["mask"]
    tokens = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    # Drift from the sampling policy, k3 KL(π_θ || π_old) — logged whether or not β > 0.
    kl_old = jnp.sum(k3_kl_per_token(logp, mb["logp_old"], valid)) / tokens
    diag = {**diag, "kl_old": jax.lax.stop_gradient(kl_old)}
    return loss, (diag, counts)


def rl_updates(state: dict, batch: dict, order_KM: jax.Array, *, graphdef,
               optimizer: optax.GradientTransformation, uc: UpdateConfig) -> tuple[dict, dict]:
    """K updates; order_KM holds the row indices of each minibatch. Metrics: means over K."""
    grad_fn = jax.value_and_grad(_loss, has_aux=True)

    def one(carry, rows):
        params, biases, opt_state = carry
        mb = jax.tree.map(lambda x: x[rows], batch)
        (loss, (diag, counts)), grads = grad_fn(params, biases, mb, graphdef, uc)
        grad_norm = global_norm(grads)
        updates, new_opt = optimizer.update(grads, opt_state, params)
        finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                  & jnp.isfinite(global_norm(updates)))
        new = (optax.apply_updates(params, updates), new_opt,
               update_biases(biases, counts, uc.bias_update_rate, uc.num_moe))
        # A non-finite minibatch update is skipped (the loop stops after several in a row).
        params, opt_state, biases = keep_if_finite(finite, new, (params, opt_state, biases))
        metrics = {"loss": loss, "grad_norm": grad_norm, **diag,
                   "nonfinite": 1.0 - finite.astype(jnp.float32)}
        return (params, biases, opt_state), (metrics, counts)

    carry = (state["params"], state["biases"], state["opt_state"])
    (params, biases, opt_state), (metrics, counts) = jax.lax.scan(one, carry, order_KM)
    metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), metrics)
    metrics["lr"] = current_lr(opt_state)
    new_state = {"params": params, "biases": biases, "opt_state": opt_state,
                 "step": state["step"] + 1}
    return new_state, {**metrics, "expert_counts": jnp.sum(counts, axis=0)}


def minibatch_order(num_prompts: int, group_size: int, minibatches: int, epochs: int,
                    key: jax.Array) -> np.ndarray:
    """Row indices [epochs * minibatches, N / minibatches]: each epoch a fresh shuffle of whole
    groups (prompt p owns rows p*G .. p*G+G-1), cut into equal minibatches."""
    per = num_prompts // minibatches
    out = []
    for epoch in range(epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), num_prompts))
        for m in range(minibatches):
            prompts = np.sort(perm[m * per:(m + 1) * per])
            out.append((prompts[:, None] * group_size + np.arange(group_size)[None, :]).ravel())
    return np.stack(out).astype(np.int32)
