"""Ling 2.0 causal LM: embedding → dense stack → MoE stack → final norm → head, plus MTP layers."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ling_jax.config.model import num_moe_layers
from ling_jax.config.validation import validate_model_config
from ling_jax.model.attention import attention_mask
from ling_jax.model.linear import dtype_of, param
from ling_jax.model.logical import constrain
from ling_jax.model.mtp import MTPLayer, shift_left
from ling_jax.model.norms import RMSNorm
from ling_jax.model.rotary import rope_cos_sin, rope_frequencies
from ling_jax.model.stack import apply_stack, make_stack
from ling_jax.ops.attention_context import sequence_order
from ling_jax.ops.token_loss import head_logits

ACTIVATION_AXES = ("batch", "seq", "embed")


class ModelOutput(NamedTuple):
    logits: jax.Array | None  # [B, T, V] fp32 (None with return_hidden=True)
    mtp_logits: jax.Array | None  # [n_mtp, B, T, V] fp32 (n_mtp may be 0; None likewise)
    expert_counts: jax.Array  # [n_moe + n_mtp, E] int32: MoE stack layers, then MTP layers
    router_logits: jax.Array  # [n_moe + n_mtp, B, T, E] fp32, same order
    ep_dropped: jax.Array | None = None  # [n_moe + n_mtp] int32 rows dropped by EP capacity
    # Under context parallelism the model runs (and returns logits/router logits) in zig-zag token
    # order: position t of the outputs is input position order[t]. None: natural order.
    order: jax.Array | None = None
    # With return_hidden=True: the normed hidden states the head reads, in place of logits.
    hidden: jax.Array | None = None  # [B, T, D]
    mtp_hidden: jax.Array | None = None  # [n_mtp, B, T, D]


def reorder(x_BT: jax.Array, order) -> jax.Array:
    """x[:, order] (identity when order is None): inputs or targets into the model's order."""
    return x_BT if order is None else jnp.take(x_BT, jnp.asarray(order), axis=1)


class LingForCausalLM(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_model_config(cfg)
        self.cfg = cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.dtype = dtype
        d, v, std = cfg.hidden_size, cfg.vocab_size, cfg.initializer_range
        self.embed = param(rngs, (v, d), ("vocab", "embed"), std=std, dtype=pdtype)
        kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.num_dense, self.num_moe = cfg.first_k_dense_replace, num_moe_layers(cfg)
        self.dense_layers = nnx.data(
            make_stack(cfg, self.num_dense, use_moe=False, **kw) if self.num_dense else None
        )
        self.moe_layers = nnx.data(
            make_stack(cfg, self.num_moe, use_moe=True, **kw) if self.num_moe else None
        )
        self.final_norm = RMSNorm(d, eps=cfg.rms_norm_eps, param_dtype=pdtype)
        self.lm_head = param(rngs, (d, v), ("embed", "vocab"), std=std, dtype=pdtype)
        self.mtp_layers = nnx.List(
            [MTPLayer(cfg, **kw) for _ in range(cfg.num_nextn_predict_layers)]
        )

    def logits(self, h_BTD: jax.Array) -> jax.Array:
        return head_logits(h_BTD, self.lm_head[...], self.dtype)

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        mtp: bool = True,
        frozen: bool = False,
        return_hidden: bool = False,
    ) -> ModelOutput:
        """input_ids [B,T]; positions restart per packed document; segment_ids 0 marks padding.
        Under context parallelism the outputs come in `ModelOutput.order` (see `reorder`).

        mtp=False skips the MTP layers (inference and RL log-probs never read them): mtp_logits is
        then [0, B, T, V] and the counts / router logits cover the MoE stack only.
        frozen=True: no gradient will flow through the layers (inference; see `apply_stack`).
        return_hidden=True returns the head's inputs (`hidden`, `mtp_hidden`) instead of logits,
        for losses that run the head themselves (ops.token_loss, in token chunks)."""
        cfg = self.cfg
        batch, length = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        order = sequence_order(length)
        natural_ids = input_ids
        input_ids, positions = reorder(input_ids, order), reorder(positions, order)
        segment_ids = None if segment_ids is None else reorder(segment_ids, order)
        token_mask = None if segment_ids is None else segment_ids > 0
        inv_freq, attention_scaling = rope_frequencies(cfg)  # numpy, folded at trace time
        cos, sin = rope_cos_sin(positions, inv_freq, attention_scaling, self.dtype)
        mask = attention_mask(segment_ids, batch, length)
        embed = self.embed[...]
        x = constrain(jnp.take(embed, input_ids, axis=0).astype(self.dtype), ACTIVATION_AXES)
        run = dict(scan=cfg.scan_layers, remat_policy=cfg.remat_policy, frozen=frozen)
        if self.dense_layers is not None:
            x, _ = apply_stack(
                self.dense_layers, x, cos, sin, mask, token_mask, num_layers=self.num_dense, **run
            )
        counts, router_logits, dropped = [], [], []
        if self.moe_layers is not None:
            x, (c, r, d) = apply_stack(
                self.moe_layers, x, cos, sin, mask, token_mask, num_layers=self.num_moe, **run
            )
            counts.append(c)
            router_logits.append(r)
            dropped.append(d)
        return self._heads(x, natural_ids, embed, cos, sin, mask, token_mask,
                           (counts, router_logits, dropped), order, mtp=mtp,
                           return_hidden=return_hidden)

    def _heads(self, x, input_ids, embed, cos, sin, mask, token_mask, aux,
               order=None, *, mtp: bool = True, return_hidden: bool = False) -> ModelOutput:
        """Final norm, MTP layers and logits after the MoE stack; aux holds the stack's lists of
        (expert counts, router logits, dropped EP rows), to which the MTP layers' are appended.
        input_ids in natural order (MTP shifts them across context shards before reordering).
        Shared with parallel.pipeline.PipelinedLing."""
        counts, router_logits, dropped = aux
        batch, length = input_ids.shape
        h = final = self.final_norm(x)
        mtp_hidden, ids = [], input_ids
        for layer in self.mtp_layers if mtp else ():
            ids = shift_left(ids)
            emb = jnp.take(embed, reorder(ids, order), axis=0).astype(self.dtype)
            h, (c, r, d) = layer(h, constrain(emb, ACTIVATION_AXES), cos, sin, mask, token_mask)
            mtp_hidden.append(h)
            counts.append(c[None])
            router_logits.append(r[None])
            dropped.append(d[None])
        n_exp = self.cfg.num_experts
        if return_hidden:
            logits = mtp_logits = None
        else:
            logits = self.logits(final)
            mtp_logits = (jnp.stack([self.logits(m) for m in mtp_hidden]) if mtp_hidden else
                          jnp.zeros((0, batch, length, self.cfg.vocab_size), jnp.float32))
        return ModelOutput(
            logits=logits,
            mtp_logits=mtp_logits,
            expert_counts=(jnp.concatenate(counts) if counts else jnp.zeros((0, n_exp), jnp.int32)),
            router_logits=(
                jnp.concatenate(router_logits)
                if router_logits
                else jnp.zeros((0, batch, length, n_exp), jnp.float32)
            ),
            ep_dropped=jnp.concatenate(dropped) if dropped else jnp.zeros((0,), jnp.int32),
            order=None if order is None else jnp.asarray(order, jnp.int32),
            hidden=final if return_hidden else None,
            mtp_hidden=((jnp.stack(mtp_hidden) if mtp_hidden else
                         jnp.zeros((0, batch, length, final.shape[-1]), final.dtype))
                        if return_hidden else None),
        )
