"""Losses vs float64 NumPy cross-entropy, a naive MTP-target loop and the bailing-tiny fixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.train.losses import mtp_targets, next_token_loss, total_loss, z_loss


def _ref_nll(logits, targets, mask):
    x = np.asarray(logits, np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
    safe = np.where(mask, targets, 0)
    picked = np.take_along_axis(x, safe[..., None], -1)[..., 0]
    return np.where(mask, lse - picked, 0.0)


def _random_batch(seed, b=3, t=17, v=61, scale=4.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(b, t, v)) * scale).astype(np.float32)
    targets = rng.integers(0, v, size=(b, t))
    mask = rng.random((b, t)) > 0.25
    targets = np.where(mask, targets, -100)  # masked targets may be junk
    return logits, targets, mask


@pytest.fixture(scope="module")
def jit_loss():
    return jax.jit(next_token_loss)


def test_next_token_loss_matches_float64(jit_loss):
    logits, targets, mask = _random_batch(0)
    s, n = jit_loss(logits, targets, mask)
    assert s.dtype == jnp.float32 and n.dtype == jnp.int32
    assert int(n) == mask.sum()
    assert float(s) == pytest.approx(_ref_nll(logits, targets, mask).sum(), rel=1e-6)


def test_loss_is_stable_for_huge_logits(jit_loss):
    logits, targets, mask = _random_batch(1, scale=30.0)
    shifted = logits + np.float32(1e4)  # exp would overflow without the max shift
    s, _ = jit_loss(shifted, targets, mask)
    assert np.isfinite(float(s))
    # fp32 spacing at 1e4 is 1e-3: the shifted inputs themselves are only that exact.
    want = _ref_nll(shifted, targets, mask).sum()
    assert float(s) == pytest.approx(want, rel=1e-6, abs=mask.sum() * 2e-3)


def test_bf16_logits_are_promoted_to_float32(jit_loss):
    logits, targets, mask = _random_batch(2)
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    s, _ = jit_loss(bf16, targets, mask)
    want = _ref_nll(np.asarray(bf16, np.float64), targets, mask).sum()
    assert float(s) == pytest.approx(want, rel=1e-6)


def test_gradient_is_softmax_minus_onehot():
    logits, targets, mask = _random_batch(3, b=2, t=5, v=13)
    grad = jax.grad(lambda x: next_token_loss(x, targets, mask)[0])(jnp.asarray(logits))
    x = np.float64(logits)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(13)[np.where(mask, targets, 0)]
    want = np.where(mask[..., None], p - onehot, 0.0)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5, atol=1e-7)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="targets"):
        next_token_loss(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4)))


def _naive_mtp(targets, mask, seg, depth):
    b, t = targets.shape
    out_t, out_m = np.zeros_like(targets), np.zeros_like(mask)
    for i in range(b):
        for j in range(t):
            k = j + depth
            if k < t and seg[i, k] == seg[i, j] and mask[i, k]:
                out_t[i, j], out_m[i, j] = targets[i, k], True
    return out_t, out_m


def _packed_batch(seed, b=4, t=23, v=50):
    """Rows of packed documents (segment ids 1, 2, ...; 0 = padding) with a shifted batch."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((b, t), np.int32)
    for i in range(b):
        pos, doc = 0, 1
        while pos < t - 2:
            length = int(rng.integers(1, 8))
            seg[i, pos : pos + length] = doc
            pos, doc = pos + length, doc + 1
    ids = rng.integers(1, v, size=(b, t))
    targets = np.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:]
    next_same = np.zeros((b, t), bool)
    next_same[:, :-1] = seg[:, 1:] == seg[:, :-1]
    mask = next_same & (seg > 0) & (rng.random((b, t)) > 0.1)  # some prompt-like masked tokens
    return targets, mask, seg


@pytest.mark.parametrize("depth", [1, 2, 3, 30])
def test_mtp_targets_match_naive_loop(depth):
    targets, mask, seg = _packed_batch(depth)
    got_t, got_m = jax.jit(mtp_targets, static_argnums=3)(targets, mask, seg, depth)
    want_t, want_m = _naive_mtp(targets, mask, seg, depth)
    np.testing.assert_array_equal(np.asarray(got_m), want_m)
    np.testing.assert_array_equal(np.asarray(got_t), want_t)
    if depth < 23:
        assert want_m.any() and (mask & ~want_m).any()  # the case is not trivial


def test_mtp_targets_never_cross_documents():
    # Two documents in a row: [a0 a1 a2 | b0 b1]; depth 1 from a1 would be b0 -> masked.
    seg = np.array([[1, 1, 1, 2, 2]])
    targets = np.array([[11, 12, 0, 21, 0]])  # a0->a1, a1->a2, a2 has no next, b0->b1
    mask = np.array([[True, True, False, True, False]])
    t, m = mtp_targets(targets, mask, seg, 1)
    np.testing.assert_array_equal(np.asarray(m), [[True, False, False, False, False]])
    assert int(t[0, 0]) == 12


def test_mtp_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        mtp_targets(jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool), jnp.ones((1, 4)), 0)


def test_z_loss_matches_numpy_per_layer():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 2, 7, 16)).astype(np.float32) * 3
    mask = rng.random((2, 7)) > 0.3
    got = jax.jit(z_loss)(logits, mask)
    x = np.float64(logits)
    lse = np.log(np.exp(x).sum(-1))
    want = (lse**2 * mask).sum((-2, -1)) / mask.sum()
    assert got.shape == (3,)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    np.testing.assert_allclose(float(z_loss(logits[0])), (lse[0] ** 2).mean(), rtol=1e-6)


def test_total_loss_combines_the_parts():
    rng = np.random.default_rng(6)
    targets, mask, seg = _packed_batch(6, b=2, t=19, v=31)
    logits = rng.normal(size=(2, 19, 31)).astype(np.float32) * 2
    mtp_logits = rng.normal(size=(2, 2, 19, 31)).astype(np.float32) * 2
    router = rng.normal(size=(4, 2, 19, 8)).astype(np.float32)
    loss, metrics = jax.jit(total_loss)(
        logits,
        targets,
        mask,
        seg,
        mtp_logits=mtp_logits,
        mtp_weight=0.3,
        router_logits=router,
        router_mask=seg > 0,
        z_coef=1e-2,
    )
    lm = _ref_nll(logits, targets, mask).sum() / mask.sum()
    mtps = []
    for d in range(2):
        t_d, m_d = _naive_mtp(targets, mask, seg, d + 1)
        mtps.append(_ref_nll(mtp_logits[d], t_d, m_d).sum() / m_d.sum())
    lse = np.log(np.exp(np.float64(router)).sum(-1))
    z_layers = (lse**2 * (seg > 0)).sum((-2, -1)) / (seg > 0).sum()
    want = lm + 0.3 * np.mean(mtps) + 1e-2 * z_layers.sum()
    assert float(metrics["lm_loss"]) == pytest.approx(lm, rel=1e-6)
    assert float(metrics["mtp_loss"]) == pytest.approx(np.mean(mtps), rel=1e-6)
    assert float(metrics["z_loss"]) == pytest.approx(z_layers.mean(), rel=1e-6)
    assert float(loss) == pytest.approx(want, rel=1e-6) and float(metrics["loss"]) == float(loss)
    assert int(metrics["num_tokens"]) == mask.sum()


def test_total_loss_without_extras_is_the_lm_loss():
    logits, targets, mask = _random_batch(8)
    seg = np.ones(mask.shape, np.int32)
    loss, metrics = jax.jit(total_loss)(logits, targets, mask, seg, mtp_weight=0.1, z_coef=1e-3)
    assert float(loss) == float(metrics["lm_loss"])
    assert float(metrics["mtp_loss"]) == 0.0 and float(metrics["z_loss"]) == 0.0


def test_fixture_losses(bailing_tiny_dir):
    """Targets built as the data pipeline does reproduce the upstream float64 losses."""
    ref = np.load(bailing_tiny_dir / "reference.npz")
    ids, labels = ref["input_ids"], ref["labels"]
    b, t = ids.shape
    targets = np.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:]  # targets[t] = ids[t+1] within the row
    mask = np.zeros((b, t), bool)
    mask[:, :-1] = labels[:, 1:] != -100  # the target position's label decides; last is masked
    seg = np.ones((b, t), np.int32)  # one document per row
    loss, metrics = jax.jit(total_loss)(
        ref["logits"], targets, mask, seg, mtp_logits=ref["mtp_logits"], mtp_weight=0.1
    )
    # float32 sums of ~44 per-token losses of ~6.4: the spacing of float32 at 6.4 is 4.8e-7, so
    # the bound is relative (measured: 2.8e-8, 1.1e-6, 2.3e-7 absolute).
    assert float(metrics["lm_loss"]) == pytest.approx(float(ref["loss_main"]), rel=1e-6)
    assert float(metrics["mtp_loss"]) == pytest.approx(float(ref["loss_mtp"]), rel=1e-6)
    assert float(loss) == pytest.approx(float(ref["loss_total"]), rel=1e-6)
    assert int(metrics["num_tokens"]) == int((labels[:, 1:] != -100).sum())
