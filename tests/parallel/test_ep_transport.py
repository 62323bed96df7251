"""Expert-parallel dispatch on 8 CPU devices against a float64 NumPy MoE (drops included)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.ops import ep_transport, expert_compute
from ling_jax.ops.ep_transport import EPSettings, capacity
from ling_jax.ops.expert_compute import ExpertWeights
from ling_jax.parallel.mesh import make_mesh, mesh_spec

TOKENS, HIDDEN, WIDTH, EXPERTS, TOP_K = 64, 16, 8, 8, 3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(TOKENS, HIDDEN)).astype(np.float32)
    # Skewed routing: expert 0 takes every token's first slot (overflows small capacities).
    idx = np.stack([np.r_[0, rng.permutation(np.arange(1, EXPERTS))[:TOP_K - 1]]
                    for _ in range(TOKENS)]).astype(np.int32)
    w = rng.uniform(0.1, 1.0, size=(TOKENS, TOP_K)).astype(np.float32)
    weights = ExpertWeights(*(rng.normal(size=s).astype(np.float32) * 0.3 for s in
                              [(EXPERTS, HIDDEN, WIDTH), (EXPERTS, HIDDEN, WIDTH),
                               (EXPERTS, WIDTH, HIDDEN)]))
    return x, idx, w, weights


def _numpy_moe(x, idx, w, weights, keep):
    g, u, d = (np.asarray(a, np.float64) for a in weights)
    out = np.zeros(x.shape, np.float64)
    for t in range(x.shape[0]):
        for k in range(idx.shape[1]):
            if keep[t, k]:
                e = idx[t, k]
                h = x[t] @ g[e]
                out[t] += w[t, k] * ((h / (1 + np.exp(-h))) * (x[t] @ u[e])) @ d[e]
    return out


def _numpy_keep(idx, token_shards, n_ep, factor):
    """Rows kept: per source shard and destination device, the first `capacity` in (t, k) order."""
    local = EXPERTS // n_ep
    per = idx.shape[0] // token_shards
    cap = capacity(per, TOP_K, n_ep, local, factor)
    keep = np.zeros(idx.shape, bool)
    for s in range(token_shards):
        used = np.zeros(n_ep, int)
        for t in range(s * per, (s + 1) * per):
            for k in range(TOP_K):
                dest = idx[t, k] // local
                keep[t, k] = used[dest] < cap
                used[dest] += 1
    return keep


MESHES = [dict(data=2, expert=2, tensor=2), dict(fsdp=4, expert=2), dict(expert=8)]


def _run(mesh_cfg, transport, factor, rules_batch=("data", "fsdp", "expert")):
    mesh = make_mesh(mesh_spec(mesh_cfg))
    settings = EPSettings(token_axes=rules_batch, capacity_factor=factor)
    fn = jax.jit(functools.partial(ep_transport.ep_expert_compute, dtype=jnp.float32,
                                   transport=transport, settings=settings))
    return mesh, fn


@pytest.mark.parametrize("mesh_cfg", MESHES)
@pytest.mark.parametrize("transport", ["all_to_all", "ragged_emulated"])
def test_dropless_matches_numpy_and_dense(problem, mesh_cfg, transport):
    x, idx, w, weights = problem
    mesh, fn = _run(mesh_cfg, transport, 0.0)
    with jax.set_mesh(mesh):
        y, dropped = fn(x, idx, w, weights)
    ref = _numpy_moe(x, idx, w, weights, np.ones(idx.shape, bool))
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-5, atol=1e-5)
    dense = expert_compute.get("dense")(x, idx, w, weights, dtype=jnp.float32)
    np.testing.assert_allclose(y, dense, rtol=1e-5, atol=1e-6)
    assert int(dropped) == 0


@pytest.mark.parametrize("transport", ["all_to_all", "ragged_emulated"])
def test_capacity_factor_drops_and_counts(problem, transport):
    x, idx, w, weights = problem
    mesh_cfg, shards, n_ep = dict(fsdp=4, expert=2), 8, 2
    mesh, fn = _run(mesh_cfg, transport, 0.6)
    with jax.set_mesh(mesh):
        y, dropped = fn(x, idx, w, weights)
    keep = _numpy_keep(idx, shards, n_ep, 0.6)
    assert 0 < int(dropped) == int((~keep).sum())
    ref = _numpy_moe(x, idx, w, weights, keep)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-5, atol=1e-5)


def test_tokens_replicated_over_expert_axis(problem):
    """Rule set `fsdp`: tokens not sharded over `expert` → local experts + psum, same result."""
    x, idx, w, weights = problem
    mesh, fn = _run(dict(fsdp=4, expert=2), "all_to_all", 0.0, rules_batch=("data", "fsdp"))
    with jax.set_mesh(mesh):
        y, _ = fn(x, idx, w, weights)
    ref = _numpy_moe(x, idx, w, weights, np.ones(idx.shape, bool))
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transport", ["all_to_all", "ragged_emulated"])
def test_gradients_match_dense(problem, transport):
    x, idx, w, weights = problem
    r = np.random.default_rng(1).normal(size=(TOKENS, HIDDEN)).astype(np.float32)
    mesh = make_mesh(mesh_spec(dict(data=2, expert=2, tensor=2)))

    def loss(fn, x, w, weights):
        return jnp.sum(fn(x, idx, w, weights) * r)

    ep = lambda *a: ep_transport.ep_expert_compute(*a, dtype=jnp.float32, transport=transport,
                                                   settings=EPSettings())[0]
    dense = lambda *a: expert_compute.get("dense")(*a, dtype=jnp.float32)
    with jax.set_mesh(mesh):
        got = jax.jit(jax.grad(functools.partial(loss, ep), argnums=(0, 1, 2)))(x, w, weights)
    want = jax.grad(functools.partial(loss, dense), argnums=(0, 1, 2))(x, w, weights)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_without_mesh_runs_the_local_backend(problem):
    x, idx, w, weights = problem
    y = expert_compute.get("ep_all_to_all")(x, idx, w, weights, dtype=jnp.float32)
    np.testing.assert_allclose(y, expert_compute.get("blocked")(x, idx, w, weights,
                                                                dtype=jnp.float32), rtol=1e-6)


def test_capacity_bounds():
    assert capacity(100, 8, 4, 64, 0.0) == 800  # every row could go to one device
    assert capacity(100, 8, 64, 4, 0.0) == 400  # at most E/n distinct experts per device
    assert capacity(100, 8, 4, 64, 1.25) == 250


def test_compute_with_drops_counts_for_ep_backends_only(problem):
    """The model's entry: (y, dropped) for every backend name; only EP backends can drop."""
    x, idx, w, weights = problem
    mesh = make_mesh(mesh_spec(dict(fsdp=4, expert=2)))
    keep = _numpy_keep(idx, 8, 2, 0.6)
    for name, factor, want_dropped in [("ep_all_to_all", 0.6, int((~keep).sum())),
                                       ("ep_all_to_all", 0.0, 0), ("blocked", 0.6, 0)]:
        fn = jax.jit(functools.partial(expert_compute.compute_with_drops(name), dtype=jnp.float32))
        with jax.set_mesh(mesh), ep_transport.ep_settings(EPSettings(capacity_factor=factor)):
            y, dropped = fn(x, idx, w, weights)
        assert int(dropped) == want_dropped, name
        kept = keep if want_dropped else np.ones(idx.shape, bool)
        np.testing.assert_allclose(np.asarray(y, np.float64), _numpy_moe(x, idx, w, weights, kept),
                                   rtol=1e-5, atol=1e-5)
    assert want_dropped == 0 and int((~keep).sum()) > 0
