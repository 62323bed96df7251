"""Every expert-compute backend against a float64 NumPy loop and against `dense`, with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.ops import dispatch, expert_compute
from ling_jax.ops.expert_compute import ExpertWeights

BACKENDS = ["dense", "ragged_dot", "blocked", "all_experts"]


def _problem(tokens=48, hidden=16, width=8, experts=8, top_k=3, seed=0, skew=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tokens, hidden)).astype(np.float32)
    if skew:  # most tokens on expert 0, several experts empty
        idx = np.stack(
            [np.zeros(tokens, int), rng.integers(1, 3, tokens), rng.integers(3, 4, tokens)], 1
        )[:, :top_k]
    else:
        idx = np.stack([rng.permutation(experts)[:top_k] for _ in range(tokens)])
    w = rng.uniform(0.1, 1.0, size=(tokens, top_k)).astype(np.float32)
    weights = ExpertWeights(
        *(
            rng.normal(size=s).astype(np.float32) * 0.3
            for s in [(experts, hidden, width), (experts, hidden, width), (experts, width, hidden)]
        )
    )
    return x, idx.astype(np.int32), w, weights


def _numpy_moe(x, idx, w, weights):
    g, u, d = (np.asarray(a, np.float64) for a in weights)
    out = np.zeros(x.shape, np.float64)
    for t in range(x.shape[0]):
        for k in range(idx.shape[1]):
            e = idx[t, k]
            h = x[t] @ g[e]
            out[t] += w[t, k] * ((h / (1 + np.exp(-h))) * (x[t] @ u[e])) @ d[e]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("skew", [False, True])
def test_forward_matches_numpy(backend, skew):
    x, idx, w, weights = _problem(skew=skew)
    fn = jax.jit(lambda *a: expert_compute.get(backend)(*a, dtype=jnp.float32))
    out = fn(
        jnp.asarray(x), jnp.asarray(idx), jnp.asarray(w), ExpertWeights(*map(jnp.asarray, weights))
    )
    np.testing.assert_allclose(out, _numpy_moe(x, idx, w, weights), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["ragged_dot", "blocked", "all_experts"])
def test_gradients_match_dense(backend):
    x, idx, w, weights = _problem(seed=1, skew=True)
    probe = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)

    def loss(name, x, w, weights):
        y = expert_compute.get(name)(x, jnp.asarray(idx), w, weights, dtype=jnp.float32)
        return jnp.sum(y * probe)

    args = (jnp.asarray(x), jnp.asarray(w), ExpertWeights(*map(jnp.asarray, weights)))
    ref = jax.grad(lambda *a: loss("dense", *a), argnums=(0, 1, 2))(*args)
    got = jax.grad(lambda *a: loss(backend, *a), argnums=(0, 1, 2))(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("block_size", [1, 4, 16, 64])
def test_blocked_any_block_size(block_size):
    x, idx, w, weights = _problem(tokens=30, seed=2)
    out = expert_compute.blocked(
        jnp.asarray(x),
        jnp.asarray(idx),
        jnp.asarray(w),
        ExpertWeights(*map(jnp.asarray, weights)),
        dtype=jnp.float32,
        block_size=block_size,
    )
    np.testing.assert_allclose(out, _numpy_moe(x, idx, w, weights), atol=2e-5, rtol=1e-5)


def test_block_plan_layout():
    """Every routed row gets its own slot inside a block owned by its expert."""
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 5, size=(40, 2)).astype(np.int32)
    plan = dispatch.block_plan(jnp.asarray(idx), 5, 8)
    slots = np.asarray(plan.row_slot)
    assert len(set(slots.tolist())) == slots.size
    owner = np.asarray(plan.block_expert)[slots // 8]
    np.testing.assert_array_equal(owner, idx.reshape(-1))
    np.testing.assert_array_equal(np.asarray(plan.slot_token)[slots], np.arange(80) // 2)


def test_bfloat16_close_to_float32():
    x, idx, w, weights = _problem(seed=4)
    args = (
        jnp.asarray(x),
        jnp.asarray(idx),
        jnp.asarray(w),
        ExpertWeights(*map(jnp.asarray, weights)),
    )
    ref = expert_compute.blocked(*args, dtype=jnp.float32)
    low = expert_compute.blocked(*args, dtype=jnp.bfloat16)
    assert float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref)) < 2e-2


def test_unknown_backend_named():
    with pytest.raises(ValueError, match="unknown MoE backend 'nope'.*blocked"):
        expert_compute.get("nope")


def test_config_backend_names_match_the_registry():
    from ling_jax.config.validation import MOE_BACKENDS

    assert sorted(MOE_BACKENDS) == expert_compute.names()


def test_block_plan_inverse_maps():
    """slot_row inverts row_slot; padding slots point at row R and token T."""
    rng = np.random.default_rng(6)
    idx = rng.integers(0, 6, size=(37, 3)).astype(np.int32)
    plan = dispatch.block_plan(jnp.asarray(idx), 6, 4)
    row_slot, slot_row = np.asarray(plan.row_slot), np.asarray(plan.slot_row)
    np.testing.assert_array_equal(slot_row[row_slot], np.arange(idx.size))
    padding = np.setdiff1d(np.arange(slot_row.size), row_slot)
    assert (slot_row[padding] == idx.size).all()
    assert (np.asarray(plan.slot_token)[padding] == 37).all()


@pytest.mark.parametrize("skew", [False, True])
def test_blocked_bfloat16_gradients_close_to_float32(skew):
    """The hand-written backward in bf16 (fp32 accumulation) tracks the fp32 gradients."""
    x, idx, w, weights = _problem(seed=7, skew=skew)
    probe = jnp.asarray(np.random.default_rng(8).normal(size=x.shape).astype(np.float32))

    def grads(dtype):
        def loss(x, w, weights):
            y = expert_compute.blocked(x, jnp.asarray(idx), w, weights, dtype=dtype)
            return jnp.sum(y * probe)

        args = (jnp.asarray(x), jnp.asarray(w), ExpertWeights(*map(jnp.asarray, weights)))
        return jax.grad(loss, argnums=(0, 1, 2))(*args)

    for low, ref in zip(jax.tree.leaves(grads(jnp.bfloat16)), jax.tree.leaves(grads(jnp.float32)),
                        strict=True):
        assert low.dtype == ref.dtype == jnp.float32  # fp32 master weights get fp32 gradients
        assert float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref)) < 2e-2


@pytest.mark.parametrize("num_used_experts", [3, 17, 40])
def test_blocked_tail_chunks_skip_only_empty_blocks(num_used_experts):
    """40 experts in blocks of 2: 60 always-used blocks and a 40-block tail in chunks of 8 that
    are skipped when empty. Routing over 3, 17 or 40 experts leaves 0 to ~5 tail chunks in use;
    outputs and gradients still match the float64 loop and `dense`."""
    rng = np.random.default_rng(9 + num_used_experts)
    tokens, top_k, experts = 60, 2, 40
    x, _, w, weights = _problem(tokens=tokens, experts=experts, top_k=top_k, seed=num_used_experts)
    pool = rng.permutation(experts)[:num_used_experts]
    idx = np.stack([rng.choice(pool, top_k, replace=False) for _ in range(tokens)]).astype(np.int32)
    plan = dispatch.block_plan(jnp.asarray(idx), experts, 2)
    counts = np.bincount(idx.ravel(), minlength=experts)
    assert int(plan.used_blocks) == int(np.sum(-(-counts // 2)))
    assert (np.asarray(plan.slot_row).reshape(-1, 2)[int(plan.used_blocks):] == idx.size).all()
    args = (jnp.asarray(x), jnp.asarray(w), ExpertWeights(*map(jnp.asarray, weights)))
    probe = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))

    def loss(name, x, w, weights):
        kw = {"block_size": 2} if name == "blocked" else {}
        return jnp.sum(expert_compute.get(name)(x, jnp.asarray(idx), w, weights,
                                                 dtype=jnp.float32, **kw) * probe)

    out = expert_compute.blocked(*args[:1], jnp.asarray(idx), *args[1:], dtype=jnp.float32,
                                 block_size=2)
    np.testing.assert_allclose(out, _numpy_moe(x, idx, w, weights), atol=2e-5, rtol=1e-5)
    ref = jax.grad(lambda *a: loss("dense", *a), argnums=(0, 1, 2))(*args)
    got = jax.grad(lambda *a: loss("blocked", *a), argnums=(0, 1, 2))(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)


_F32, _BF16 = jnp.float32, jnp.bfloat16


@pytest.mark.parametrize("backend,dtype,tokens,skew", [
    *[("all_experts", d, t, s) for d in (_F32, _BF16) for t in (1, 8, 32) for s in (False, True)]])
def test_inference_backends_are_bitwise_blocked(backend, dtype, tokens, skew):
    """Decode steps swap `blocked` for `all_experts`: greedy tokens must not change, so the
    values must be the same bits (same products, fp32 accumulation and combine)."""
    x, idx, w, weights = _problem(tokens=tokens, hidden=64, width=32, experts=16, top_k=3,
                                  seed=tokens, skew=skew)
    args = (jnp.asarray(x, dtype), jnp.asarray(idx), jnp.asarray(w),
            ExpertWeights(*(jnp.asarray(a, dtype) for a in weights)))
    out = {name: np.asarray(jax.jit(lambda *a, name=name: expert_compute.get(name)(
        *a, dtype=dtype))(*args)) for name in ("blocked", backend)}
    np.testing.assert_array_equal(out[backend], out["blocked"])


def test_ragged_dot_backward_runs_in_the_operand_dtype():
    """The ragged_dot backend's grouped matmul: fp32 gradients equal autodiff's (random groups,
    an empty one); with bf16 operands the forward and both backward grouped matmuls take bf16
    operands (no fp32 [rows, D] cotangent, as ops.mixed_einsum for dense dots) and the weight
    gradient is accumulated and returned in fp32."""
    from ling_jax.ops.expert_compute import _ragged_dot

    rng = np.random.default_rng(3)
    lhs = jnp.asarray(rng.standard_normal((12, 8)), jnp.float32)
    rhs = jnp.asarray(rng.standard_normal((4, 8, 6)), jnp.float32)
    sizes = jnp.array([5, 0, 4, 3], jnp.int32)
    g = jnp.asarray(rng.standard_normal((12, 6)), jnp.float32)
    plain = jax.grad(lambda a, b: jnp.sum(jax.lax.ragged_dot(a, b, sizes) * g), (0, 1))(lhs, rhs)
    ours = jax.grad(lambda a, b: jnp.sum(_ragged_dot(a, b, sizes) * g), (0, 1))(lhs, rhs)
    for want, got in zip(plain, ours, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    bf = lambda x: x.astype(jnp.bfloat16)
    jaxpr = jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(_ragged_dot(a, b, sizes) * g), (0, 1)))(
        bf(lhs), bf(rhs))
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name.startswith("ragged_dot")]
    dots += [e for eq in jaxpr.jaxpr.eqns for sub in jax.core.jaxprs_in_params(eq.params)
             for e in sub.eqns if e.primitive.name.startswith("ragged_dot")]
    assert len(dots) == 3, [e.primitive.name for e in dots]  # forward + two backward
    for e in dots:  # bf16 operands; the weight gradient (the only fp32 result) accumulates fp32
        assert all(v.aval.dtype == jnp.bfloat16 for v in e.invars[:2]), e
    assert [e.outvars[0].aval.dtype for e in dots].count(jnp.float32) == 1
