"""Contract shared by grpo, gspo and lpo: registry, clip boundaries, jit, gradient flow, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.rl import objectives
from ling_jax.rl.objectives import k3_kl_per_token

NAMES = ["grpo", "gspo", "lpo"]
DELTA = 1e-5  # beyond the boundary by far more than float32 rounding near 1 (6e-8)


def test_registry():
    assert objectives.names() == NAMES
    assert objectives.get("lpo") is objectives.lpo_loss
    with pytest.raises(ValueError, match="unknown RL objective 'ppo'.*grpo"):
        objectives.get("ppo")


def _float32_ratio(target: float) -> tuple[float, float]:
    """A log-ratio whose float32 exp is some r32 near target, and r32 itself exactly."""
    lr = np.float32(np.log(target))
    return float(lr), float(np.float32(jnp.exp(jnp.float32(lr))))


# (advantage, side, offset from the bound, clip binds): ratio = bound + offset.
CASES = [
    (+1.0, "high", 0.0, False),
    (+1.0, "high", +DELTA, True),
    (+1.0, "high", -DELTA, False),
    (+1.0, "low", -DELTA, False),  # A > 0 never clips from below
    (+1.0, "low", 0.0, False),
    (-1.0, "low", 0.0, False),
    (-1.0, "low", -DELTA, True),
    (-1.0, "low", +DELTA, False),
    (-1.0, "high", +DELTA, False),  # A < 0 never clips from above
    (-0.7, "high", 0.0, False),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("adv, side, offset, binds", CASES)
def test_clip_boundaries(name, adv, side, offset, binds):
    """One-token responses: all three objectives reduce to the PPO term of that token."""
    eps_nominal = {"grpo": 0.2, "gspo": 3e-4, "lpo": 0.03}[name]
    bound = 1.0 + eps_nominal if side == "high" else 1.0 - eps_nominal
    # Put the bound exactly on a float32 ratio so "at the bound" is exact, not within rounding.
    _, bound32 = _float32_ratio(bound)
    eps = abs(bound32 - 1.0)
    lr, r32 = _float32_ratio(bound32 + offset)
    assert (r32 > bound32) == (offset > 0) and (r32 == bound32) == (offset == 0)
    logp = jnp.full((2, 1), lr, jnp.float32)
    args = (jnp.zeros((2, 1)), jnp.ones((2, 1), bool), jnp.full((2,), adv), jnp.zeros((2, 1), int))
    fn = functools.partial(objectives.get(name), eps=eps, eps_high=eps)
    (loss, diag), grad = jax.value_and_grad(lambda x: fn(x, *args), has_aux=True)(logp)
    clipped_ratio = min(max(r32, 1.0 - eps), 1.0 + eps)
    expected = min(r32 * adv, clipped_ratio * adv)
    np.testing.assert_allclose(float(loss), -expected, rtol=1e-6)
    assert float(diag["clip_fraction"]) == float(binds)
    if offset != 0.0:  # at the exact bound the min/clip subgradient is a convention
        expected_grad = 0.0 if binds else -adv * r32 / 2  # mean over the 2 one-token responses
        np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-6)


@pytest.fixture(scope="module")
def small_batch():
    rng = np.random.default_rng(11)
    n, t = 4, 10
    mask = np.zeros((n, t), bool)
    for i, (s, e) in enumerate([(1, 9), (0, 10), (3, 5), (2, 7)]):
        mask[i, s:e] = True
    sid = np.where(mask, np.cumsum(rng.uniform(size=(n, t)) < 0.3, axis=1), -1)
    sid = np.where(mask, sid - np.min(np.where(mask, sid, 99), axis=1, keepdims=True), -1)
    logp = np.where(mask, np.log(rng.uniform(0.1, 0.9, (n, t))), np.nan)
    logp_old = np.where(mask, logp + rng.normal(0, 0.1, (n, t)), -np.inf)
    ref = np.where(mask, logp + rng.normal(0, 0.2, (n, t)), np.inf)
    return [jnp.asarray(x, jnp.float32) for x in (logp, logp_old)] + [
        jnp.asarray(mask),
        jnp.asarray(rng.normal(size=n), jnp.float32),
        jnp.asarray(sid, jnp.int32),
        jnp.asarray(ref, jnp.float32),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager_and_gradients_only_through_logp(name, small_batch):
    logp, logp_old, mask, adv, sid, ref = small_batch
    fn = objectives.get(name)
    kw = {"eps": 0.05, "eps_high": None, "logp_ref": ref, "kl_beta": 0.1}

    def loss_of(logp, logp_old, adv, ref):
        return fn(logp, logp_old, mask, adv, sid, **{**kw, "logp_ref": ref})[0]

    eager = fn(logp, logp_old, mask, adv, sid, **kw)
    jitted = jax.jit(functools.partial(fn, **{k: v for k, v in kw.items() if k != "logp_ref"}))(
        logp, logp_old, mask, adv, sid, logp_ref=ref
    )
    # XLA may re-associate float32 sums under jit: agreement to float32 rounding of O(1) terms.
    np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-6, atol=2e-7)
    for key in eager[1]:
        np.testing.assert_allclose(jitted[1][key], eager[1][key], rtol=1e-6, atol=2e-7)
    # NaN/inf padding stays out of the value and of every gradient.
    grads = jax.grad(loss_of, argnums=(0, 1, 2, 3))(logp, logp_old, adv, ref)
    assert np.isfinite(float(eager[0]))
    assert np.all(np.isfinite(grads[0])) and np.any(grads[0] != 0)
    assert np.all(np.asarray(grads[0])[~np.asarray(mask)] == 0)
    for g in grads[1:]:
        assert np.all(np.asarray(g) == 0)


def test_k3_values():
    logp = jnp.array([[-1.0, -2.0, -0.5, 3.0]])
    ref = jnp.array([[-1.0, -1.0, -2.5, 0.0]])
    mask = jnp.array([[True, True, True, False]])
    d = np.array([0.0, 1.0, -2.0])
    expected = np.exp(d) - d - 1.0  # 0, e - 2, e^-2 + 1
    np.testing.assert_allclose(k3_kl_per_token(logp, ref, mask)[0, :3], expected, rtol=1e-6)
    assert float(k3_kl_per_token(logp, ref, mask)[0, 3]) == 0.0
    _, diag = objectives.grpo_loss(
        logp, logp, mask, jnp.ones(1), jnp.zeros((1, 4), int), logp_ref=ref
    )
    np.testing.assert_allclose(diag["kl"], expected.mean(), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(name, small_batch):
    logp, logp_old, mask, adv, sid, ref = small_batch
    fn = objectives.get(name)
    with pytest.raises(ValueError, match="logp_old must have the shape"):
        fn(logp, logp_old[:, :3], mask, adv, sid)
    with pytest.raises(ValueError, match=r"advantages must be \[N\]"):
        fn(logp, logp_old, mask, adv[:2], sid)
    with pytest.raises(ValueError, match="kl_beta=0.1 needs logp_ref"):
        fn(logp, logp_old, mask, adv, sid, kl_beta=0.1)
    with pytest.raises(ValueError, match="eps must be in"):
        fn(logp, logp_old, mask, adv, sid, eps=1.5)
    with pytest.raises(ValueError, match="logp must be"):
        fn(logp[0], logp_old[0], mask[0], adv, sid[0])


@pytest.mark.parametrize("name", NAMES)
def test_all_masked_gives_zero_not_nan(name, small_batch):
    logp, logp_old, mask, adv, sid, ref = small_batch
    loss, diag = objectives.get(name)(logp, logp_old, jnp.zeros_like(mask), adv, sid, logp_ref=ref)
    assert float(loss) == 0.0 and float(diag["kl"]) == 0.0
