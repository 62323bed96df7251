"""GSPO against an independent float64 NumPy loop: one ratio per response, sequence-mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.rl.objectives import gspo_loss


def gspo_reference(b, clip, eps_low, eps_high):
    """(-J, clip_fraction, mean_ratio, d(-J)/d logp) by loops over responses."""
    rows = [i for i in range(b["mask"].shape[0]) if b["mask"][i].any()]
    total = clipped = ratios = 0.0
    grad = np.zeros_like(b["logp"])
    for i in rows:
        cols = np.nonzero(b["mask"][i])[0]
        s = np.exp(np.mean(b["logp"][i, cols] - b["logp_old"][i, cols]))
        a = b["advantages"][i]
        term, is_clipped = clip(s, a, eps_low, eps_high)
        total += term
        clipped += is_clipped
        ratios += s
        grad[i, cols] = 0.0 if is_clipped else -a * s / len(cols) / len(rows)
    return -total / len(rows), clipped / len(rows), ratios / len(rows), grad


def _run(b, **kw):
    logp, logp_old = (jnp.asarray(b[k], jnp.float32) for k in ("logp", "logp_old"))
    rest = (jnp.asarray(b["mask"]), jnp.asarray(b["advantages"], jnp.float32), b["sentence_ids"])
    fn = lambda x: gspo_loss(x, logp_old, *rest, **kw)
    (loss, diag), grad = jax.value_and_grad(fn, has_aux=True)(logp)
    return float(loss), jax.tree.map(float, diag), np.asarray(grad)


@pytest.mark.parametrize("noise, eps, eps_high", [(0.15, 3e-4, 4e-4), (0.15, 0.04, None)])
def test_gspo_matches_numpy(make, clip, noise, eps, eps_high):
    for seed in range(3):
        b = make(seed, n=8, noise=noise)
        loss, diag, grad = _run(b, eps=eps, eps_high=eps_high)
        ref_loss, ref_cf, ref_ratio, ref_grad = gspo_reference(
            b, clip, eps, eps if eps_high is None else eps_high
        )
        np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(diag["clip_fraction"], ref_cf, rtol=1e-6)
        np.testing.assert_allclose(diag["mean_ratio"], ref_ratio, rtol=2e-5)
        np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=1e-7)


def test_gspo_defaults_are_the_paper_band():
    """Default band [1 - 3e-4, 1 + 4e-4]: 1.00035 is inside, 1.00045 outside (A > 0)."""
    lr = np.log(np.array([[1.00035], [1.00045]]))
    out = gspo_loss(lr, np.zeros_like(lr), np.ones_like(lr, bool), np.ones(2), np.zeros((2, 1)))
    np.testing.assert_allclose(out[1]["clip_fraction"], 0.5)
    np.testing.assert_allclose(out[0], -(1.00035 + 1.0004) / 2, rtol=1e-6)


def test_gspo_kl_and_empty_response(make, clip, k3):
    b = make(3, n=5)
    b["mask"][2] = False  # an empty response weighs nothing
    b["logp"][2], b["logp_old"][2], b["logp_ref"][2] = 40.0, -np.inf, np.nan
    ref = jnp.asarray(b["logp_ref"], jnp.float32)
    loss, diag, grad = _run(b, eps=0.05, eps_high=None, logp_ref=ref, kl_beta=0.2)
    pg_loss, _, _, pg_grad = gspo_reference(b, clip, 0.05, 0.05)
    kl, kl_grad = k3(b["logp"], b["logp_ref"], b["mask"])
    np.testing.assert_allclose(diag["kl"], kl, rtol=2e-5)
    np.testing.assert_allclose(loss, pg_loss + 0.2 * kl, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, pg_grad + 0.2 * kl_grad, rtol=2e-5, atol=1e-7)


def test_numpy_reference_gradient_matches_finite_differences(make, clip, fd_grad):
    b = make(8, n=4, t=6)
    grad = gspo_reference(b, clip, 0.04, 0.04)[3]
    fd = fd_grad(lambda bb: gspo_reference(bb, clip, 0.04, 0.04)[0], b)
    assert np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)
