"""Activation sharding hints: no-ops without rules, effective under a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, PartitionSpec

from ling_jax.config import get_preset
from ling_jax.model.logical import activation_sharding, constrain
from ling_jax.model.transformer import LingForCausalLM


def test_constrain_is_identity_without_rules():
    x = jnp.arange(6.0).reshape(2, 3)
    assert constrain(x, ("batch", "embed")) is x


def test_rules_shard_activations_and_keep_values():
    cfg = get_preset("tiny")
    cfg.update(dict(num_hidden_layers=2, hidden_size=64, head_dim=16, intermediate_size=128,
                    moe_intermediate_size=32, moe_shared_expert_intermediate_size=32))
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(0), (8, 16), 0, cfg.vocab_size)
    plain = nnx.jit(lambda m, i: m(i).logits)(model, ids)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))

    def to_spec(axes):
        return PartitionSpec(*["data" if a == "batch" else None for a in axes])

    @nnx.jit
    def sharded(m, i):
        with activation_sharding(mesh, to_spec):
            return m(i).logits

    out = sharded(model, ids)
    np.testing.assert_allclose(out, plain, atol=1e-5)
    assert tuple(out.sharding.spec)[:1] == ("data",) and not any(tuple(out.sharding.spec)[1:])
