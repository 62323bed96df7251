"""The LM head's cross-entropy over token chunks equals the whole-logits loss and a float64 NumPy
reference, values and gradients (hidden states and head), with padding, masked targets and T not a
multiple of the chunk count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.ops.token_loss import head_nll_sum

B, T, D, V = 2, 10, 16, 50


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((B, T, D)).astype(np.float32)
    w = (rng.standard_normal((D, V)) / np.sqrt(D)).astype(np.float32)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    mask = rng.random((B, T)) < 0.7
    targets[~mask] = -100  # masked targets may be anything
    return h, w, targets, mask


def _reference(h, w, targets, mask):
    """(Σ nll, d/dh, d/dw) in float64."""
    h64, w64 = h.astype(np.float64), w.astype(np.float64)
    logits = h64 @ w64
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    safe = np.where(mask, targets, 0)
    picked = np.take_along_axis(p, safe[..., None], -1)[..., 0]
    loss = -np.sum(np.where(mask, np.log(picked), 0.0))
    dlogits = p.copy()
    np.put_along_axis(dlogits, safe[..., None], np.take_along_axis(p, safe[..., None], -1) - 1, -1)
    dlogits *= mask[..., None]
    return loss, dlogits @ w64.T, np.einsum("btd,btv->dv", h64, dlogits)


def _loss_and_grads(h, w, targets, mask, dtype, chunks):
    fn = lambda h, w: head_nll_sum(h, w, targets, mask, dtype, chunks=chunks)
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(jnp.asarray(h), jnp.asarray(w))


@pytest.mark.parametrize("chunks", [1, 3, 4, 10])
def test_chunked_loss_and_gradients_match_float64(chunks):
    h, w, targets, mask = _inputs()
    loss, (dh, dw) = _loss_and_grads(h, w, targets, mask, jnp.float32, chunks)
    ref_loss, ref_dh, ref_dw = _reference(h, w, targets, mask)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dh), ref_dh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=1e-5, atol=1e-6)


def test_chunked_bfloat16_loss_matches_whole_logits():
    h, w, targets, mask = _inputs(1)
    whole, (dh1, dw1) = _loss_and_grads(h, w, targets, mask, jnp.bfloat16, 1)
    chunked, (dh4, dw4) = _loss_and_grads(h, w, targets, mask, jnp.bfloat16, 4)
    np.testing.assert_allclose(float(chunked), float(whole), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dh4), np.asarray(dh1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw4), np.asarray(dw1), rtol=1e-5, atol=1e-6)


def test_chunks_must_be_a_positive_integer():
    h, w, targets, mask = _inputs()
    with pytest.raises(ValueError, match="loss chunks must be an integer >= 1"):
        head_nll_sum(jnp.asarray(h), jnp.asarray(w), targets, mask, jnp.float32, chunks=0)
