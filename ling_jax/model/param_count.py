"""Total and activated parameter counts on the abstract model (jax.eval_shape: nothing allocated)."""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from ling_jax.config.model import num_moe_layers
from ling_jax.model.transformer import LingForCausalLM


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    total: int  # all parameters of the main model (embedding and head included), no MTP
    activated: int  # per token: embedding + head + dense layers + routed top-k + shared (§8.1)
    activated_non_embedding: int  # activated minus embedding and head
    mtp_total: int  # what the MTP layers add
    mtp_activated: int
    expert_bias: int  # fp32 non-trainable balancing state entries (main model)
    mtp_expert_bias: int  # the MTP layers' balancing entries (reference §8.1 counts them in)


def _size(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def count_params(cfg) -> ParamCounts:
    model = nnx.eval_shape(lambda: LingForCausalLM(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    mtp = params.pop("mtp_layers", {})
    total = _size(params)
    expert_size = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    inactive = (cfg.num_experts - cfg.num_experts_per_tok) * expert_size
    activated = total - num_moe_layers(cfg) * inactive
    embedding = 2 * cfg.vocab_size * cfg.hidden_size
    mtp_total = _size(mtp)
    biases = nnx.state(model, nnx.Not(nnx.Param)).to_pure_dict()
    mtp_biases = biases.pop("mtp_layers", {})
    return ParamCounts(
        total=total,
        activated=activated,
        activated_non_embedding=activated - embedding,
        mtp_total=mtp_total,
        mtp_activated=mtp_total - cfg.num_nextn_predict_layers * inactive,
        expert_bias=_size(biases),
        mtp_expert_bias=_size(mtp_biases),
    )
