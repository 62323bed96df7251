"""Router: group-limited top-k and combine weights against a NumPy implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.model.router import expert_counts, group_limited_topk, route_tokens
from tests.model.numpy_reference import route as numpy_route


@pytest.mark.parametrize(
    "experts,groups,topk_group,top_k", [(16, 4, 2, 4), (64, 8, 4, 8), (32, 1, 1, 6), (16, 8, 3, 5)]
)
def test_group_limited_topk_matches_numpy(experts, groups, topk_group, top_k):
    rng = np.random.default_rng(experts + top_k)
    tokens, hidden = 64, 24
    x = rng.normal(size=(tokens, hidden)).astype(np.float32)
    w = rng.normal(size=(hidden, experts)).astype(np.float32) * 0.3
    bias = rng.normal(size=(experts,)).astype(np.float32) * 0.2
    routing = route_tokens(
        jnp.asarray(x),
        jnp.asarray(w),
        jnp.asarray(bias),
        top_k=top_k,
        n_group=groups,
        topk_group=topk_group,
        routed_scaling_factor=2.5,
    )
    cfg = dict(
        n_group=groups, topk_group=topk_group, num_experts_per_tok=top_k, routed_scaling_factor=2.5
    )
    logits = x.astype(np.float64) @ w.astype(np.float64)
    ref_idx, ref_w = numpy_route(logits, bias.astype(np.float64), cfg)
    np.testing.assert_array_equal(np.asarray(routing.expert_idx_TK), ref_idx)
    np.testing.assert_allclose(routing.weights_TK, ref_w, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(routing.weights_TK).sum(-1), 2.5, rtol=1e-5)
    # Chosen experts lie in at most topk_group groups.
    groups_used = np.asarray(routing.expert_idx_TK) // (experts // groups)
    assert max(len(set(row)) for row in groups_used) <= topk_group


def test_bias_changes_selection_but_not_weights():
    """The weights are the unbiased sigmoid scores of the chosen experts, renormalised."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    bias = jnp.zeros((8,)).at[3].set(10.0)  # forces expert 3 into every selection
    kw = dict(top_k=2, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    routed = route_tokens(x, w, bias, **kw)
    assert (np.asarray(routed.expert_idx_TK) == 3).any(-1).all()
    scores = jax.nn.sigmoid(x @ w)
    chosen = jnp.take_along_axis(scores, routed.expert_idx_TK, -1)
    np.testing.assert_allclose(routed.weights_TK, chosen / chosen.sum(-1, keepdims=True), rtol=1e-6)


def test_masked_groups_never_selected_even_with_negative_scores():
    """Masking uses -inf, so a kept expert with a negative biased score still beats a dropped one."""
    sel = jnp.array([[-5.0, -4.0, 0.9, 0.8]])
    idx = group_limited_topk(sel, top_k=2, n_group=2, topk_group=1)
    assert sorted(np.asarray(idx)[0].tolist()) == [2, 3]
    sel = jnp.array([[0.9, 0.8, -5.0, -4.0]])
    idx = group_limited_topk(sel, top_k=2, n_group=2, topk_group=1)
    assert sorted(np.asarray(idx)[0].tolist()) == [0, 1]


def test_expert_counts_respect_mask():
    idx = jnp.array([[0, 1], [1, 2], [2, 3]])
    np.testing.assert_array_equal(expert_counts(idx, 4), [1, 2, 2, 1])
    np.testing.assert_array_equal(expert_counts(idx, 4, jnp.array([1, 0, 1])), [1, 1, 1, 1])
