"""LPO against an independent float64 NumPy loop over sentences, and its GRPO/GSPO limits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.rl.objectives import grpo_loss, gspo_loss, lpo_loss


def lpo_reference(b, clip, eps_low, eps_high):
    """(-J, clip_fraction, mean_ratio, d(-J)/d logp): sum_i sum_k |s| min(..) / sum_i |y_i|."""
    valid = b["mask"] & (b["sentence_ids"] >= 0)
    n_tok = max(valid.sum(), 1)
    total = clipped = ratios = 0.0
    grad = np.zeros_like(b["logp"])
    for i in range(valid.shape[0]):
        for k in np.unique(b["sentence_ids"][i][valid[i]]):
            cols = np.nonzero(valid[i] & (b["sentence_ids"][i] == k))[0]
            r = np.exp(np.mean(b["logp"][i, cols] - b["logp_old"][i, cols]))
            a = b["advantages"][i]
            term, is_clipped = clip(r, a, eps_low, eps_high)
            total += len(cols) * term
            clipped += len(cols) * is_clipped
            ratios += len(cols) * r
            grad[i, cols] = 0.0 if is_clipped else -a * r / n_tok
    return -total / n_tok, clipped / n_tok, ratios / n_tok, grad


def _run(fn, b, **kw):
    logp, logp_old = (jnp.asarray(b[k], jnp.float32) for k in ("logp", "logp_old"))
    rest = (jnp.asarray(b["mask"]), jnp.asarray(b["advantages"], jnp.float32), b["sentence_ids"])
    loss_fn = lambda x: fn(x, logp_old, *rest, **kw)
    (loss, diag), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp)
    return float(loss), jax.tree.map(float, diag), np.asarray(grad)


@pytest.mark.parametrize("eps, eps_high", [(0.03, None), (0.02, 0.05)])
def test_lpo_matches_numpy(batch, clip, eps, eps_high):
    loss, diag, grad = _run(lpo_loss, batch, eps=eps, eps_high=eps_high)
    ref = lpo_reference(batch, clip, eps, eps if eps_high is None else eps_high)
    assert 0.0 < ref[1] < 1.0
    np.testing.assert_allclose(loss, ref[0], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(diag["clip_fraction"], ref[1], rtol=1e-6)
    np.testing.assert_allclose(diag["mean_ratio"], ref[2], rtol=2e-5)
    np.testing.assert_allclose(grad, ref[3], rtol=2e-5, atol=1e-7)


def test_lpo_default_eps_is_003(batch, clip):
    np.testing.assert_allclose(
        _run(lpo_loss, batch)[0], lpo_reference(batch, clip, 0.03, 0.03)[0], rtol=2e-5, atol=1e-6
    )


def test_lpo_kl_term(batch, clip, k3):
    ref = jnp.asarray(batch["logp_ref"], jnp.float32)
    loss, diag, grad = _run(lpo_loss, batch, logp_ref=ref, kl_beta=0.3)
    pg_loss, _, _, pg_grad = lpo_reference(batch, clip, 0.03, 0.03)
    kl, kl_grad = k3(batch["logp"], batch["logp_ref"], batch["mask"])
    np.testing.assert_allclose(diag["kl"], kl, rtol=2e-5)
    np.testing.assert_allclose(loss, pg_loss + 0.3 * kl, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, pg_grad + 0.3 * kl_grad, rtol=2e-5, atol=1e-7)


def test_one_token_sentences_give_grpo(batch):
    """Every token its own sentence: LPO == GRPO with the same eps, value and gradient."""
    b = dict(batch)
    b["sentence_ids"] = np.where(b["mask"], np.arange(b["mask"].shape[1])[None, :], -1)
    lpo = _run(lpo_loss, b, eps=0.2)
    grpo = _run(grpo_loss, b, eps=0.2)
    assert grpo[1]["clip_fraction"] > 0
    np.testing.assert_allclose(lpo[0], grpo[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lpo[1]["clip_fraction"], grpo[1]["clip_fraction"])
    np.testing.assert_allclose(lpo[2], grpo[2], rtol=1e-6, atol=1e-8)


def test_one_sentence_per_response_gives_length_weighted_gspo(batch, clip):
    """Whole response one sentence: (1/sum|y|) sum_i |y_i| min(s_i A_i, clip(s_i) A_i)."""
    b = dict(batch)
    b["sentence_ids"] = np.where(b["mask"], 0, -1)
    total, n_tok = 0.0, b["mask"].sum()
    for i in range(b["mask"].shape[0]):
        cols = np.nonzero(b["mask"][i])[0]
        s = np.exp(np.mean(b["logp"][i, cols] - b["logp_old"][i, cols]))
        total += len(cols) * clip(s, b["advantages"][i], 0.03, 0.03)[0]
    np.testing.assert_allclose(_run(lpo_loss, b)[0], -total / n_tok, rtol=2e-5, atol=1e-6)


def test_one_sentence_equal_lengths_equals_gspo(make):
    """With equal response lengths the length weights are uniform, so LPO == GSPO (same eps)."""
    b = make(4, n=6, t=9)
    b["mask"][:] = False
    b["mask"][:, 2:8] = True
    b["sentence_ids"] = np.where(b["mask"], 0, -1)
    b["logp"] = np.where(b["mask"], np.log(0.4) + 0.1 * np.sin(np.arange(54).reshape(6, 9)), 40.0)
    lpo = _run(lpo_loss, b, eps=0.03)
    gspo = _run(gspo_loss, b, eps=0.03, eps_high=None)
    np.testing.assert_allclose(lpo[0], gspo[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lpo[1]["clip_fraction"], gspo[1]["clip_fraction"])
    np.testing.assert_allclose(lpo[2], gspo[2], rtol=1e-5, atol=1e-8)


def test_sentence_ids_need_not_be_ordered_and_unlabelled_tokens_drop_out(make, clip):
    b = make(5, n=3, t=8)
    b["mask"][:] = True
    b["logp"] = np.log(np.random.default_rng(5).uniform(0.1, 0.9, size=(3, 8)))
    b["logp_old"] = b["logp"] + np.random.default_rng(6).normal(0, 0.1, size=(3, 8))
    b["sentence_ids"] = np.array(
        [[7, 7, 2, 2, 2, 7, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7], [-1, 3, 3, 3, 3, -1, 5, 5]]
    )
    loss, diag, grad = _run(lpo_loss, b)
    ref = lpo_reference(b, clip, 0.03, 0.03)
    np.testing.assert_allclose(loss, ref[0], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref[3], rtol=2e-5, atol=1e-7)
    assert grad[2, 0] == 0.0 and grad[2, 5] == 0.0
    np.testing.assert_allclose(diag["num_tokens"], 22)


def test_numpy_reference_gradient_matches_finite_differences(make, clip, fd_grad):
    b = make(9, n=4, t=7)
    grad = lpo_reference(b, clip, 0.03, 0.03)[3]
    fd = fd_grad(lambda bb: lpo_reference(bb, clip, 0.03, 0.03)[0], b)
    assert np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)
