"""Circular (interleaved) pipeline over the `pipeline` mesh axis for the stacked MoE layers.

S stages (devices on the axis), R repeats (virtual stages per device), M microbatches. The L MoE
layers form S·R virtual stages of Lp = L/(S·R) layers; virtual stage v = r·S + s runs on device s.
Every iteration all stages run at once (vmap over a stage axis sharded over `pipeline`), then the
activations shift one stage (a collective permute); what leaves the last stage re-enters stage 0
for the next repeat through a per-microbatch buffer, which needs M ≥ S. Iterations: R·M + S − 1,
of which S − 1 are fill/drain: bubble fraction (S − 1)/(R·M + S − 1).
Dense-first layers, the final norm, the head and the MTP layers run outside the pipeline.
Parameters keep the model's layout ([L, ...], layers contiguous per device when R = 1); with
R > 1 the step regathers the MoE weights into [R, S, Lp, ...] order (an all-to-all per step).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from ling_jax.model.attention import attention_mask
from ling_jax.model.moe import ExpertBias
from ling_jax.model.rotary import rope_cos_sin, rope_frequencies
from ling_jax.model.stack import apply_stack
from ling_jax.model.transformer import LingForCausalLM, ModelOutput
from ling_jax.ops.ep_transport import current_settings, ep_settings


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    stages: int
    repeats: int
    microbatches: int
    axis: str = "pipeline"

    @property
    def iterations(self) -> int:
        return self.repeats * self.microbatches + self.stages - 1


def bubble_fraction(stages: int, repeats: int, microbatches: int) -> float:
    """Idle share of a circular schedule: (S − 1) / (R·M + S − 1)."""
    return (stages - 1) / (repeats * microbatches + stages - 1)


def _constrain_stages(tree, axis: str):
    """Shard the leading stage axis over `axis`; leave the other dims to the partitioner."""
    def one(a):
        spec = P(axis, *([P.UNCONSTRAINED] * (a.ndim - 1)))
        return jax.lax.with_sharding_constraint(a, spec)
    return jax.tree.map(one, tree)


def _split_micro(a, m: int):
    """[B, ...] → [M, B/M, ...] with microbatch m = rows m, m+M, ... (each data shard keeps its
    share of every microbatch, so the split moves nothing between devices)."""
    return jnp.swapaxes(a.reshape(a.shape[0] // m, m, *a.shape[1:]), 0, 1)


def _merge_micro(a):
    return jnp.swapaxes(a, 0, 1).reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def pipeline_stack(stack, x_BTD, side: tuple, *, num_layers: int, settings: PipelineSettings,
                   scan: bool, remat_policy: str):
    """The MoE stack on the circular schedule; returns (x, (counts [L, E], logits [L, B, T, E],
    dropped EP rows [L]))."""
    s_, r_, m_ = settings.stages, settings.repeats, settings.microbatches
    lp = num_layers // (s_ * r_)
    graphdef, state = nnx.split(stack)
    # layer l = r·S·Lp + s·Lp + j  →  [R, S, Lp, ...]
    w = jax.tree.map(lambda a: a.reshape(r_, s_, lp, *a.shape[1:]), state)
    w = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(
        a, P(None, settings.axis, *([P.UNCONSTRAINED] * (a.ndim - 2)))), w)
    x_mb = _split_micro(x_BTD, m_)
    side_mb = jax.tree.map(functools.partial(_split_micro, m=m_), side)
    stage_ids = jnp.arange(s_)

    def stage_fn(stage_state, x, cos, sin, mask, token_mask):
        layers = nnx.merge(graphdef, stage_state)
        with ep_settings(dataclasses.replace(current_settings(), under_vmap=True)):
            return apply_stack(layers, x, cos, sin, mask, token_mask, num_layers=lp, scan=scan,
                               remat_policy=remat_policy)

    run_stages = jax.vmap(stage_fn, spmd_axis_name=settings.axis)

    # One iteration, rematerialised: its backward keeps only the stage inputs, not the weights
    # each stage picked (a per-iteration copy of the MoE weights) nor per-layer activations.
    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
    def iteration(w, r_s, inputs, args):
        ws = jax.tree.map(lambda a: a[0] if r_ == 1 else a[r_s, stage_ids], w)  # [S, Lp, ...]
        return run_stages(ws, inputs, *args)

    b, t, e = x_mb.shape[1], x_mb.shape[2], stack.mlp.router.shape[-1]

    def body(carry, i):
        prev, loop_buf, counts, logits, dropped = carry
        k = i - stage_ids  # virtual microbatch index of each stage
        valid = (k >= 0) & (k < r_ * m_)
        m_s, r_s = jnp.clip(k, 0, None) % m_, jnp.clip(k // m_, 0, r_ - 1)
        first = jnp.where(r_s[0] == 0, x_mb[m_s[0]], loop_buf[m_s[0]])
        inputs = _constrain_stages(jnp.roll(prev, 1, axis=0).at[0].set(first), settings.axis)
        args = jax.tree.map(lambda a: a[m_s], side_mb)
        out, (c, lg, d) = iteration(w, r_s, inputs, args)
        out = _constrain_stages(out, settings.axis)
        last = m_s[-1]
        loop_buf = loop_buf.at[last].set(jnp.where(valid[-1], out[-1], loop_buf[last]))
        c = jnp.where(valid[:, None, None], c, 0)
        counts = counts.at[r_s, stage_ids].add(c)
        dropped = dropped.at[r_s, stage_ids].add(jnp.where(valid[:, None], d, 0))  # no bubbles
        keep = valid[:, None, None, None, None]
        logits = logits.at[r_s, stage_ids, :, m_s].set(
            jnp.where(keep, lg, logits[r_s, stage_ids, :, m_s]))
        return (out, loop_buf, counts, logits, dropped), None

    init = (jnp.zeros((s_, b, t, x_BTD.shape[-1]), x_BTD.dtype), jnp.zeros_like(x_mb),
            jnp.zeros((r_, s_, lp, e), jnp.int32), jnp.zeros((r_, s_, lp, m_, b, t, e), jnp.float32),
            jnp.zeros((r_, s_, lp), jnp.int32))
    init = (_constrain_stages(init[0], settings.axis), *init[1:])
    (_, out, counts, logits, dropped), _ = jax.lax.scan(body, init,
                                                        jnp.arange(settings.iterations))
    logits = jax.vmap(_merge_micro)(logits.reshape(num_layers, m_, b, t, e))
    return _merge_micro(out), (counts.reshape(num_layers, e), logits, dropped.reshape(num_layers))


class PipelinedLing(LingForCausalLM):
    """LingForCausalLM whose MoE stack runs on the circular pipeline (same parameters)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, pipeline: PipelineSettings):
        super().__init__(cfg, rngs=rngs)
        self.pipeline = pipeline

    def __call__(self, input_ids, positions=None, segment_ids=None, *,
                 return_hidden: bool = False) -> ModelOutput:
        cfg = self.cfg
        batch, length = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        token_mask = None if segment_ids is None else segment_ids > 0
        inv_freq, scaling = rope_frequencies(cfg)
        cos, sin = rope_cos_sin(positions, inv_freq, scaling, self.dtype)
        mask = attention_mask(segment_ids, batch, length)
        embed = self.embed[...]
        x = jnp.take(embed, input_ids, axis=0).astype(self.dtype)
        run = dict(scan=cfg.scan_layers, remat_policy=cfg.remat_policy)
        if self.dense_layers is not None:
            x, _ = apply_stack(self.dense_layers, x, cos, sin, mask, token_mask,
                               num_layers=self.num_dense, **run)
        counts, router_logits, dropped = [], [], []
        if self.moe_layers is not None:
            tm = jnp.ones((batch, length), bool) if token_mask is None else token_mask
            x, (c, r, d) = pipeline_stack(self.moe_layers, x, (cos, sin, mask, tm),
                                          num_layers=self.num_moe, settings=self.pipeline, **run)
            counts.append(c)
            router_logits.append(r)
            dropped.append(d)
        return self._heads(x, input_ids, embed, cos, sin, mask, token_mask,
                           (counts, router_logits, dropped), return_hidden=return_hidden)


def pipelined_graphdef(graphdef, abstract_params, abstract_biases, settings: PipelineSettings):
    """The graph of `graphdef`'s model with its MoE stack on the pipeline (same state layout)."""
    cfg = nnx.merge(graphdef, abstract_params, abstract_biases).cfg
    model = nnx.eval_shape(lambda: PipelinedLing(cfg, rngs=nnx.Rngs(0), pipeline=settings))
    return nnx.split(model, nnx.Param, ExpertBias)[0]


def pipelined_step_fn(fn: Any, plan) -> Any:
    """fn = partial(train_step, graphdef=..., ...) with the graphdef swapped for the pipelined one."""
    spec = plan.spec
    stages = int(plan.mesh.shape["pipeline"])
    settings = PipelineSettings(stages, spec.repeats if spec else 1,
                                spec.microbatches if spec else 2 * stages)
    if settings.microbatches < stages:
        raise ValueError(f"mesh.pipeline_microbatches={settings.microbatches} must be >= the "
                         f"pipeline stages ({stages}) for the circular schedule")
    abstract = plan.abstract_state
    graphdef = pipelined_graphdef(fn.keywords["graphdef"], abstract["params"], abstract["biases"],
                                  settings)
    return functools.partial(fn.func, *fn.args, **{**fn.keywords, "graphdef": graphdef})
