"""Context-parallel attention on 8 CPU devices equals one-device attention (fp32, 1e-5 relative).

Random q/k/v with GQA, two packed documents per row and a padded tail; the sharded run gets the
tokens in zig-zag order and its outputs and input gradients are compared after undoing it.
"""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from ling_jax.ops import attention_registry as registry
from ling_jax.ops.attention_backends import attend
from ling_jax.ops.attention_context import (
    ContextSettings,
    context_parallel_attention,
    context_settings,
    sequence_order,
    zigzag_order,
)
from ling_jax.ops.attention_mask import AttentionMask, self_attention_mask

B, T, N, K, H = 2, 32, 4, 2, 8


def _inputs():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(B, T, N, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, T, K, H)).astype(np.float32) for _ in "kv")
    seg = np.ones((B, T), np.int32)
    seg[:, 13:] = 2  # a document boundary inside a chunk
    seg[0, -3:] = 0
    return q, k, v, seg


def _attention(backend):
    if backend == "static_reference":  # splash's path on CPU: a branch per shard, keys sliced
        return functools.partial(context_parallel_attention, registry.get("reference"),
                                 static_offsets=True, block_q=2, block_kv=4)
    return functools.partial(attend, backend, block_q=2, block_kv=4)


def _loss_and_grads(backend, q, k, v, seg, weights):
    mask = self_attention_mask(seg, B, T)
    out, vjp = jax.vjp(lambda q, k, v: _attention(backend)(q, k, v, mask), q, k, v)
    return out, vjp(weights)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(a)


def test_zigzag_order_balances_causal_work():
    order = zigzag_order(16, 4).reshape(4, 4)  # 4 shards × (2 chunks of 2)
    np.testing.assert_array_equal(order[0], [0, 1, 14, 15])
    np.testing.assert_array_equal(order[3], [6, 7, 8, 9])
    visible_keys = (order + 1).sum(axis=1)  # causal keys each shard's queries see
    assert len(set(visible_keys.tolist())) == 1
    assert sorted(order.ravel().tolist()) == list(range(16))
    with pytest.raises(ValueError, match="not divisible by 2 × mesh.context"):
        zigzag_order(12, 4)


@pytest.mark.parametrize("backend,axes,exchange", [
    ("reference", dict(data=2, context=4), "all_gather"),
    ("static_reference", dict(data=2, context=4), "all_gather"),
    ("tiled", dict(data=2, context=2, tensor=2), "all_gather"),
    ("tiled", dict(data=2, context=4), "ring"),
    ("tiled", dict(data=2, context=2, tensor=2), "ring"),
])
def test_matches_one_device(backend, axes, exchange):
    q, k, v, seg = _inputs()
    weights = np.cos(np.arange(q.size)).reshape(q.shape).astype(np.float32)  # output cotangent
    want_out, want_grads = jax.jit(lambda *a: _loss_and_grads("reference", *a))(q, k, v, seg,
                                                                                 weights)
    mesh = jax.make_mesh(tuple(axes.values()), tuple(axes), axis_types=(AxisType.Auto,) * len(axes))
    settings = ContextSettings("context", ("data",), ("tensor",) if "tensor" in axes else (),
                               exchange=exchange)
    with jax.set_mesh(mesh), context_settings(settings):
        order = sequence_order(T)
        assert order is not None and len(order) == T
        zz = lambda a: a[:, order]
        fn = jax.jit(lambda *a: _loss_and_grads(backend, *a))
        args = [zz(a) for a in (q, k, v, seg, weights)]
        got_out, got_grads = fn(*args)
        text = fn.lower(*args).as_text()
    # The ring moves K/V by collective permute only; all_gather's backward is a reduce-scatter.
    ring = exchange == "ring"
    assert ("collective_permute" in text) == ring and ("all_gather" in text) != ring
    back = np.argsort(order)
    assert _rel(want_out, np.asarray(got_out)[:, back]) <= 1e-5
    for name, a, b in zip("qkv", want_grads, got_grads, strict=True):
        assert _rel(a, np.asarray(b)[:, back]) <= 1e-5, name


def test_without_context_axis_nothing_changes():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh), context_settings(ContextSettings("context", ("data",))):
        assert sequence_order(T) is None


def test_decode_offsets_are_refused_under_context_parallelism():
    q, k, v, seg = _inputs()
    mesh = jax.make_mesh((2, 4), ("data", "context"), axis_types=(AxisType.Auto,) * 2)
    mask = AttentionMask(seg, seg, q_offset=np.int32(3))
    with jax.set_mesh(mesh), context_settings(ContextSettings("context", ("data",))), \
            pytest.raises(ValueError, match="decode .* with mesh.context=1"):
        attend("reference", q, k, v, mask, block_q=2, block_kv=2)
