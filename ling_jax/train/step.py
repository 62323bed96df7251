"""The LM train step: forward on microbatches → fp32 losses → AdamW update → expert-bias update.

Losses are normalised by the whole batch's token counts before differentiation, so the gradient
of K accumulated microbatches equals that of one big batch exactly (not a mean of means).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ling_jax.model.transformer import reorder
from ling_jax.ops.token_loss import head_nll_sum
from ling_jax.train.balancing import load_metrics, update_expert_bias
from ling_jax.train.losses import mtp_targets, z_loss
from ling_jax.train.optimizer import current_lr, global_norm

TrainState = dict[str, Any]  # {"params", "biases", "opt_state", "step"}


@dataclasses.dataclass(frozen=True)
class StepConfig:
    microbatches: int
    mtp_weight: float
    z_coef: float
    bias_update_rate: float
    num_mtp: int
    num_moe: int


def _normalisers(batch: dict, num_mtp: int) -> dict:
    """Token counts of the whole batch (data only, outside the gradient)."""
    mask = batch["loss_mask"]
    mtp = [mtp_targets(batch["targets"], mask, batch["segment_ids"], depth=d + 1)[1].sum()
           for d in range(num_mtp)]
    return {"lm": jnp.maximum(mask.sum(), 1.0),
            "mtp": [jnp.maximum(m.astype(jnp.float32), 1.0) for m in mtp],
            "tokens": jnp.maximum((batch["segment_ids"] > 0).sum().astype(jnp.float32), 1.0)}


def _micro_loss(params, biases, mb: dict, norms: dict, graphdef, sc: StepConfig):
    model = nnx.merge(graphdef, params, biases)
    out = model(mb["inputs"], mb["positions"], mb["segment_ids"], return_hidden=True)
    # Targets are built in natural order, then put in the model's (context-parallel) token order.
    order = lambda x: reorder(x, out.order)
    # The head runs inside the loss, over cfg.loss_chunks token chunks (ops.token_loss).
    nll = functools.partial(head_nll_sum, head_DV=model.lm_head[...], dtype=model.dtype,
                            chunks=model.cfg.loss_chunks)
    lm_sum = nll(out.hidden, targets_BT=order(mb["targets"]), mask_BT=order(mb["loss_mask"]))
    loss = lm_sum / norms["lm"]
    mtp_sums = []
    for d in range(sc.num_mtp):
        targets, mask = mtp_targets(mb["targets"], mb["loss_mask"], mb["segment_ids"], depth=d + 1)
        s = nll(out.mtp_hidden[d], targets_BT=order(targets), mask_BT=order(mask))
        mtp_sums.append(s)
        loss = loss + sc.mtp_weight / sc.num_mtp * s / norms["mtp"][d]
    token_mask = order(mb["segment_ids"]) > 0
    tokens = token_mask.sum().astype(jnp.float32)
    z_sum = jnp.zeros((), jnp.float32)
    if out.router_logits.shape[0]:
        # Σ over layers of z, token-weighted so microbatches add up to the batch mean.
        z_sum = z_loss(out.router_logits, token_mask).sum() * tokens
        loss = loss + sc.z_coef * z_sum / norms["tokens"]
    dropped = jnp.zeros((), jnp.int32) if out.ep_dropped is None else out.ep_dropped.sum()
    aux = {"lm_sum": lm_sum, "mtp_sums": jnp.stack(mtp_sums) if mtp_sums else jnp.zeros((0,)),
           "z_sum": z_sum, "counts": out.expert_counts, "dropped": dropped}
    return loss, aux


def _grads(params, biases, batch, norms, graphdef, sc: StepConfig):
    grad_fn = jax.value_and_grad(_micro_loss, has_aux=True)
    if sc.microbatches == 1:
        (loss, aux), grads = grad_fn(params, biases, batch, norms, graphdef, sc)
        return loss, aux, grads
    split = jax.tree.map(lambda x: x.reshape(sc.microbatches, -1, *x.shape[1:]), batch)

    def body(carry, mb):
        (loss, aux), grads = grad_fn(params, biases, mb, norms, graphdef, sc)
        return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: grad_fn(params, biases, jax.tree.map(lambda x: x[0], split), norms, graphdef, sc)))
    (loss, aux), grads = zeros
    (loss, aux, grads), _ = jax.lax.scan(body, (loss, aux, grads), split)
    return loss, aux, grads


def update_biases(biases: dict, counts, rate: float, num_moe: int) -> dict:
    """Aux-loss-free update of every MoE layer's bias (MoE stack, then MTP layers; §4)."""
    biases = jax.tree.map(lambda x: x, biases)
    if num_moe:
        mlp = biases["moe_layers"]["mlp"]
        mlp["expert_bias"] = update_expert_bias(mlp["expert_bias"], counts[:num_moe], rate)
    for j, layer in biases.get("mtp_layers", {}).items():
        mlp = layer["block"]["mlp"]
        mlp["expert_bias"] = update_expert_bias(mlp["expert_bias"], counts[num_moe + int(j)], rate)
    return biases


def keep_if_finite(finite: jax.Array, new: Any, old: Any) -> Any:
    """`new` where the step was finite, else `old` (elementwise selects XLA fuses into the
    update's own loops)."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def train_step(state: TrainState, batch: dict, *, graphdef, optimizer: optax.GradientTransformation,
               sc: StepConfig) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch; returns the new state and fp32 metrics.

    A step whose loss or gradient norm is not finite is not applied: params, biases and optimizer
    state stay as they were (metrics["nonfinite"] = 1; the loop stops after several in a row).
    """
    norms = _normalisers(batch, sc.num_mtp)
    loss, aux, grads = _grads(state["params"], state["biases"], batch, norms, graphdef, sc)
    grad_norm = global_norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    # The update too: a finite gradient times an infinite learning rate is not a step.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(global_norm(updates))
    params = optax.apply_updates(state["params"], updates)
    biases = update_biases(state["biases"], aux["counts"], sc.bias_update_rate, sc.num_moe)
    lr = current_lr(opt_state)  # of the attempted update (a skipped step keeps the old state)
    params, biases, opt_state = keep_if_finite(
        finite, (params, biases, opt_state), (state["params"], state["biases"], state["opt_state"]))
    mtp = (aux["mtp_sums"] / jnp.stack(norms["mtp"])).mean() if sc.num_mtp else jnp.zeros(())
    metrics = {
        "loss": loss, "lm_loss": aux["lm_sum"] / norms["lm"], "mtp_loss": mtp,
        "z_loss": aux["z_sum"] / norms["tokens"] / max(sc.num_moe + sc.num_mtp, 1),
        "grad_norm": grad_norm, "lr": lr, "target_tokens": norms["lm"],
        "tokens": norms["tokens"],
        "ep_dropped_tokens": aux["dropped"],  # (token, expert) rows over EP capacity (0: dropless)
        "nonfinite": 1.0 - finite.astype(jnp.float32),  # 1: this step was skipped
    }
    if aux["counts"].shape[0]:
        load = load_metrics(aux["counts"])
        metrics.update({f"load_{k}": v for k, v in load.items()})
        metrics["expert_counts"] = aux["counts"]
    new_state = {"params": params, "biases": biases, "opt_state": opt_state,
                 "step": state["step"] + 1}
    return new_state, metrics
