"""Splash attention (TPU): the forward and backward compile ahead of time for v5p and tpu7x
(Mosaic lowering from this CPU host, libtpu) at 4K, 32K and 128K tokens, GQA with segment ids;
and, in Pallas interpret mode, match the reference on a short packed row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

from ling_jax.ops.attention_core import dot_product_attention
from ling_jax.ops.attention_mask import AttentionMask, dense_mask, self_attention_mask
from ling_jax.ops.attention_splash import mosaic_lowering, splash_attention

TOPOLOGIES = {"v5p": "v5p:2x2x1", "tpu7x": "tpu7x:2x2x1"}
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 128


def _fwd_bwd(q, k, v, q_seg, kv_seg, d_out):
    mask = AttentionMask(q_seg, kv_seg)
    out, vjp = jax.vjp(lambda q, k, v: splash_attention(q, k, v, mask), q, k, v)
    return out, vjp(d_out)


@pytest.mark.tpu_backend
@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("length", [4096, 32768,
                                    pytest.param(131072, marks=pytest.mark.slow)])  # ~150 s
def test_compiles_for_tpu(topology, length):
    device = topologies.get_topology_desc(topology_name=TOPOLOGIES[topology],
                                          platform="tpu").devices[0]
    at = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                   sharding=SingleDeviceSharding(device))
    q = at((1, length, HEADS, HEAD_DIM), jnp.bfloat16)
    kv = at((1, length, KV_HEADS, HEAD_DIM), jnp.bfloat16)
    seg = at((1, length), jnp.int32)
    with mosaic_lowering():
        lowered = jax.jit(_fwd_bwd).lower(q, kv, kv, seg, seg, q)
    assert "tpu_custom_call" in lowered.as_text()  # Mosaic kernels, not interpret-mode HLO
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    # Linear in T: no [T, T] buffer (at 128K one bf16 [T, T] per head would be 32 GiB).
    assert memory.temp_size_in_bytes < 64 * length * HEADS * HEAD_DIM, memory.temp_size_in_bytes


def test_interpret_mode_matches_reference():
    """Two packed documents and padding, GQA 2, T = 200 (padded to the 128-row blocks)."""
    rng = np.random.default_rng(0)
    length = 200
    q = jnp.asarray(rng.normal(size=(1, length, HEADS, 32)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(1, length, KV_HEADS, 32)), jnp.float32) for _ in "kv")
    seg = np.ones((1, length), np.int32)
    seg[0, 70:], seg[0, 180:] = 2, 0
    mask = self_attention_mask(jnp.asarray(seg), 1, length)
    got = jax.jit(lambda: splash_attention(q, k, v, mask, block_q=128, block_kv=128))()
    want = dot_product_attention(q, k, v, dense_mask(mask))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
