"""WSM merge weights: the decay identity on toy SGD, float32 merging, and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.train.merge import (
    decay_weights_from_coefficients,
    merge_pytrees,
    profile_coefficients,
    uniform_coefficients,
    wsm_merge_coefficients,
)


def test_coefficients_worked_example():
    # w = (0.8, 0.5, 0.2): c_0 = 1 - 0.8, c_1 = 0.8 - 0.5, c_2 = 0.5 - 0.2, c_3 = 0.2.
    np.testing.assert_allclose(wsm_merge_coefficients([0.8, 0.5, 0.2]), [0.2, 0.3, 0.3, 0.2])
    np.testing.assert_allclose(wsm_merge_coefficients([1.0]), [0.0, 1.0])


def test_coefficients_sum_to_one_and_invert_to_the_profile():
    rng = np.random.default_rng(0)
    for k in (1, 2, 7, 32):
        w = np.sort(rng.uniform(0, 1, size=k))[::-1]
        c = wsm_merge_coefficients(w)
        assert c.shape == (k + 1,) and np.all(c >= 0)
        assert c.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(decay_weights_from_coefficients(c), w, atol=1e-12)


def _sgd_checkpoints(theta0, grads, lr, interval):
    """Constant-LR SGD; a checkpoint every `interval` steps (θ_0 first)."""
    theta, ckpts = theta0.copy(), [theta0.copy()]
    for s, g in enumerate(grads, start=1):
        theta = theta - lr * g
        if s % interval == 0:
            ckpts.append(theta.copy())
    return ckpts


def test_merge_equals_decayed_lr_sgd_on_linear_losses():
    # Loss_s(θ) = <a_s, θ>: gradients do not depend on θ, so the decayed-LR run must equal the merge
    # exactly (up to float64 rounding).
    rng = np.random.default_rng(1)
    k, interval, lr = 5, 3, 0.07
    theta0 = rng.normal(size=17)
    grads = rng.normal(size=(k * interval, 17))
    w = np.array([0.95, 0.7, 0.45, 0.3, 0.05])
    ckpts = _sgd_checkpoints(theta0, grads, lr, interval)
    merged = np.einsum("k,kd->d", wsm_merge_coefficients(w), np.stack(ckpts))
    decayed = theta0.copy()
    for s, g in enumerate(grads):
        decayed = decayed - lr * w[s // interval] * g  # interval i uses LR · w_{i+1}
    np.testing.assert_allclose(merged, decayed, rtol=0, atol=1e-13)


def test_merge_equals_reweighted_updates_on_a_quadratic():
    # θ-dependent gradients (quadratic loss): the merge equals θ_0 − Σ_i w_i U_i with the updates
    # U_i recorded along the constant-LR run (the identity of reference §6.3).
    rng = np.random.default_rng(2)
    a = rng.normal(size=(9, 9))
    hess, target = a @ a.T / 9 + np.eye(9), rng.normal(size=9)
    k, interval, lr = 4, 5, 0.05
    theta, ckpts, updates = rng.normal(size=9), [], []
    ckpts.append(theta.copy())
    for _ in range(k):
        start = theta.copy()
        for _ in range(interval):
            theta = theta - lr * hess @ (theta - target)
        ckpts.append(theta.copy())
        updates.append(theta - start)
    w = np.linspace(0.9, 0.1, k)
    merged = np.einsum("k,kd->d", wsm_merge_coefficients(w), np.stack(ckpts))
    want = ckpts[0] + sum(wi * u for wi, u in zip(w, updates, strict=True))
    np.testing.assert_allclose(merged, want, rtol=0, atol=1e-13)
    # merge_pytrees reproduces it in float32 on a nested tree.
    trees = [{"layer": {"kernel": jnp.asarray(c.reshape(3, 3), jnp.float32)}} for c in ckpts]
    got = merge_pytrees(trees, wsm_merge_coefficients(w))["layer"]["kernel"]
    np.testing.assert_allclose(np.asarray(got, np.float64).ravel(), want, rtol=1e-6, atol=1e-6)


def test_merge_pytrees_accumulates_in_float32_and_keeps_dtypes():
    rng = np.random.default_rng(3)
    n = 6
    trees = [
        {
            "moe_layers": {"moe": {"experts": {"gate_proj": rng.normal(size=(2, 4, 8, 3))}}},
            "final_norm": {"scale": rng.normal(size=(8,))},
            "step": np.int32(7),
        }
        for _ in range(n)
    ]
    for t in trees:  # bf16 weights, a float32 norm, an int leaf that must agree
        t["moe_layers"]["moe"]["experts"]["gate_proj"] = jnp.asarray(
            t["moe_layers"]["moe"]["experts"]["gate_proj"], jnp.bfloat16
        )
        t["final_norm"]["scale"] = jnp.asarray(t["final_norm"]["scale"], jnp.float32)
    coeffs = profile_coefficients("linear", n)
    out = merge_pytrees(trees, coeffs)
    experts = out["moe_layers"]["moe"]["experts"]["gate_proj"]
    assert experts.dtype == jnp.bfloat16 and out["final_norm"]["scale"].dtype == jnp.float32
    assert int(out["step"]) == 7
    ref = sum(
        c * np.asarray(t["moe_layers"]["moe"]["experts"]["gate_proj"], np.float64)
        for c, t in zip(coeffs, trees, strict=True)
    )
    # One bf16 rounding of the float32 sum: half a bf16 ulp is at most 2^-8 relative (8-bit
    # significand), plus float32 noise. Accumulating in bf16 would round n times.
    np.testing.assert_allclose(np.asarray(experts, np.float64), ref, rtol=2**-8 + 1e-6, atol=0)
    ref_norm = sum(
        c * np.float64(t["final_norm"]["scale"]) for c, t in zip(coeffs, trees, strict=True)
    )
    np.testing.assert_allclose(np.asarray(out["final_norm"]["scale"]), ref_norm, rtol=1e-6)


def test_uniform_and_profiles():
    np.testing.assert_allclose(uniform_coefficients(4), [0.25] * 4)
    for profile in ("linear", "cosine", "inverse_sqrt", "uniform"):
        c = profile_coefficients(profile, 9)
        assert c.shape == (9,) and c.sum() == pytest.approx(1.0, abs=1e-12) and np.all(c >= 0)
    # Linear decay over 3 intervals: w = (3/4, 1/2, 1/4) -> equal weights 1/4.
    np.testing.assert_allclose(profile_coefficients("linear", 4), [0.25] * 4)


def _two_trees():
    return [{"a": {"kernel": jnp.ones((2, 3))}} for _ in range(2)]


@pytest.mark.parametrize(
    "coeffs, message",
    [
        ([0.5, 0.6], "sum to 1"),
        ([1.0], "2 checkpoints"),
        ([1.5, -0.5], ">= 0"),
        ([0.5, float("nan")], "finite"),
    ],
)
def test_bad_coefficients(coeffs, message):
    with pytest.raises(ValueError, match=message):
        merge_pytrees(_two_trees(), coeffs)


def test_shape_mismatch_names_the_leaf():
    trees = [
        {"moe_layers": {"attn": {"q_proj": {"kernel": jnp.ones((2, 4, 4))}}}},
        {"moe_layers": {"attn": {"q_proj": {"kernel": jnp.ones((2, 4, 5))}}}},
    ]
    with pytest.raises(ValueError) as err:
        merge_pytrees(trees, [0.5, 0.5])
    assert "['moe_layers']['attn']['q_proj']['kernel']" in str(err.value)
    assert "checkpoint 1" in str(err.value)


def test_structure_mismatch_lists_missing_leaves():
    trees = [{"a": jnp.ones(2), "b": jnp.ones(2)}, {"a": jnp.ones(2)}]
    with pytest.raises(ValueError, match=r"missing \[\"\['b'\]\"\]"):
        merge_pytrees(trees, [0.5, 0.5])


def test_differing_int_leaves_are_rejected():
    trees = [{"w": jnp.ones(2), "n": jnp.int32(1)}, {"w": jnp.ones(2), "n": jnp.int32(2)}]
    with pytest.raises(ValueError, match=r"\['n'\]"):
        merge_pytrees(trees, [0.5, 0.5])


@pytest.mark.parametrize("w", [[1.2, 0.5], [0.5, 0.7], [0.5, -0.1], []])
def test_bad_decay_profiles(w):
    with pytest.raises(ValueError, match="decay_weights"):
        wsm_merge_coefficients(w)


def test_merge_runs_under_jit_inputs():
    trees = [jax.tree_util.tree_map(lambda x, i=i: x * (i + 1), _two_trees()[0]) for i in range(3)]
    out = merge_pytrees(trees, uniform_coefficients(3))
    np.testing.assert_allclose(np.asarray(out["a"]["kernel"]), np.full((2, 3), 2.0), rtol=1e-7)
