"""GRPO against an independent float64 NumPy loop: values, diagnostics, gradients, KL."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.rl.objectives import grpo_loss


def grpo_reference(b, clip, eps_low, eps_high):
    """(-J, clip_fraction, mean_ratio, d(-J)/d logp) by loops over tokens."""
    mask, n_tok = b["mask"], max(b["mask"].sum(), 1)
    total = clipped = ratios = 0.0
    grad = np.zeros_like(b["logp"])
    for i, t in zip(*np.nonzero(mask), strict=True):
        r = np.exp(b["logp"][i, t] - b["logp_old"][i, t])
        a = b["advantages"][i]
        term, is_clipped = clip(r, a, eps_low, eps_high)
        total += term
        clipped += is_clipped
        ratios += r
        grad[i, t] = 0.0 if is_clipped else -a * r / n_tok
    return -total / n_tok, clipped / n_tok, ratios / n_tok, grad


def _run(b, **kw):
    args = [jnp.asarray(b[k], jnp.float32) for k in ("logp", "logp_old")]
    rest = (jnp.asarray(b["mask"]), jnp.asarray(b["advantages"], jnp.float32), b["sentence_ids"])

    def loss_fn(logp):
        return grpo_loss(logp, args[1], *rest, **kw)

    (loss, diag), grad = jax.value_and_grad(loss_fn, has_aux=True)(args[0])
    return float(loss), jax.tree.map(float, diag), np.asarray(grad)


@pytest.mark.parametrize("eps, eps_high", [(0.2, None), (0.1, 0.28)])
def test_grpo_matches_numpy(batch, clip, eps, eps_high):
    loss, diag, grad = _run(batch, eps=eps, eps_high=eps_high)
    ref_loss, ref_cf, ref_ratio, ref_grad = grpo_reference(
        batch, clip, eps, eps if eps_high is None else eps_high
    )
    assert 0.0 < ref_cf < 1.0  # the inputs exercise both branches
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(diag["policy_loss"], ref_loss, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(diag["clip_fraction"], ref_cf, rtol=1e-6)
    np.testing.assert_allclose(diag["mean_ratio"], ref_ratio, rtol=2e-5)
    np.testing.assert_allclose(diag["num_tokens"], batch["mask"].sum())
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=1e-7)
    assert "kl" not in diag


def test_grpo_kl_term(batch, clip, k3):
    beta = 0.07
    ref = jnp.asarray(batch["logp_ref"], jnp.float32)
    loss, diag, grad = _run(batch, logp_ref=ref, kl_beta=beta)
    pg_loss, _, _, pg_grad = grpo_reference(batch, clip, 0.2, 0.2)
    kl, kl_grad = k3(batch["logp"], batch["logp_ref"], batch["mask"])
    assert kl > 0.01
    np.testing.assert_allclose(diag["kl"], kl, rtol=2e-5)
    np.testing.assert_allclose(loss, pg_loss + beta * kl, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, pg_grad + beta * kl_grad, rtol=2e-5, atol=1e-7)


def test_numpy_reference_gradient_matches_finite_differences(make, clip, fd_grad):
    """The analytic gradient used above is right: central differences on the float64 loop."""
    b = make(7, n=3, t=6)
    grad = grpo_reference(b, clip, 0.2, 0.2)[3]
    fd = fd_grad(lambda bb: grpo_reference(bb, clip, 0.2, 0.2)[0], b)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)
