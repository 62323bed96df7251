"""Rollouts: sampler log-probs == training-forward log-probs, layout, rewards → advantages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ling_jax.data.arithmetic import ArithmeticProblem
from ling_jax.model.decode import SamplingParams, make_generate_fn
from ling_jax.rl import rollout
from ling_jax.rl.update import minibatch_order
from tests.rl.rl_fixtures import CharTokenizer, small_model

TOK = CharTokenizer()


@pytest.fixture(scope="module")
def sampled():
    """4 prompts x G=3 samples at T=0.9 from a random model; max 10 new tokens."""
    model = small_model()
    graphdef, params, biases = nnx.split(model, nnx.Param, ...)
    prompts = ["Question: 1+2?", "Q: 7", "Question: 12 - 5 = ?", "abc"]
    ids, lengths = rollout.encode_prompts(TOK, prompts, 24, TOK.pad_id)
    sampling = SamplingParams(temperature=0.9, top_k=40, stop_ids=(TOK.eos_id, 10),
                              pad_id=TOK.pad_id)
    generate = make_generate_fn(graphdef, max_new_tokens=10, sampling=sampling, group_size=3)
    out = rollout.sample_groups(generate, params, biases, ids, lengths, 3, jax.random.key(1), 10,
                                TOK)
    return model, out


def test_encode_prompts_rejects_long_prompts():
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        rollout.encode_prompts(TOK, ["x" * 30], 24, TOK.pad_id)


def test_groups_are_consecutive_rows(sampled):
    _, out = sampled
    assert out.prompt_ids.shape == (12, 24) and out.response.shape == (12, 10)
    for p in range(4):
        rows = out.prompt_ids[3 * p:3 * p + 3]
        assert (rows == rows[0]).all()
    assert len(out.texts) == 12
    for text, row, n in zip(out.texts, out.response, out.lengths, strict=True):
        assert text == TOK.decode(row[:n])


def test_training_forward_reproduces_sampler_logprobs(sampled):
    """The layout fed to the full forward gives the sampler's log-probs (T=0.9, untruncated)."""
    model, out = sampled
    layout = rollout.sequence_layout(out.prompt_ids, out.prompt_lengths, out.response,
                                     out.lengths)
    fn = nnx.jit(lambda m, t, p, s, r: rollout.response_logprobs(m, t, p, s, r, 24, 0.9))
    logp, entropy, _ = fn(model, *(jnp.asarray(layout[k]) for k in
                                   ("tokens", "positions", "segment_ids")), jnp.asarray(out.response))
    mask = rollout.response_mask(out.lengths, 10)
    np.testing.assert_allclose(np.asarray(logp)[mask], out.sampler_logp[mask], atol=1e-4)
    assert np.all(out.sampler_logp[~mask] == 0)
    # Entropy against NumPy on one row's full-forward logits (unpadded sequence).
    row = 5
    seq = np.concatenate([out.prompt_ids[row, 24 - out.prompt_lengths[row]:],
                          out.response[row, :out.lengths[row]]])
    logits = np.asarray(nnx.jit(lambda m, i: m(i).logits)(model, jnp.asarray(seq[None])))[0]
    z = logits[out.prompt_lengths[row] - 1:-1].astype(np.float64) / 0.9
    logq = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1,
                                                                                            keepdims=True)
    want = -(np.exp(logq) * logq).sum(-1)
    np.testing.assert_allclose(np.asarray(entropy)[row, :out.lengths[row]], want, atol=1e-4)


def test_sequence_layout_by_hand():
    prompt_ids = np.array([[2, 2, 5, 6], [7, 8, 9, 4]], np.int32)
    layout = rollout.sequence_layout(prompt_ids, np.array([2, 4]),
                                     np.array([[11, 0, 2], [12, 13, 14]], np.int32),
                                     np.array([2, 3]))
    np.testing.assert_array_equal(layout["tokens"][0], [2, 2, 5, 6, 11, 0, 2])
    np.testing.assert_array_equal(layout["positions"][0], [0, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(layout["segment_ids"][0], [0, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(layout["positions"][1], np.arange(7))
    np.testing.assert_array_equal(layout["segment_ids"][1], 1)


def _problem(answer: str, difficulty: int = 1) -> ArithmeticProblem:
    return ArithmeticProblem(prompt="Q", completion="", answer=answer, difficulty=difficulty)


def test_rewards_advantages_and_batch_by_hand():
    """math (#### only) + format (-0.5 on <think>) + alpha * length score, then z-scores."""
    texts = ["Step 1: 3 + 4 = 7.\n#### 7", "#### 8", "<think> #### 7", "7",
             "#### 12", "#### 12", "#### 12", "no answer"]
    lengths = np.array([20, 6, 14, 1, 6, 6, 8, 9], np.int32)
    response = np.full((8, 20), 2, np.int32)
    for i, (t, n) in enumerate(zip(texts, lengths, strict=True)):
        ids = TOK.encode(t)[:n]
        response[i, :len(ids)] = ids
    rolls = rollout.Rollouts(np.zeros((8, 4), np.int32), np.full(8, 4, np.int32), response,
                             np.zeros((8, 20), np.float32), lengths, np.ones(8, bool), texts)
    weights = {"math_answer": 1.0, "format": 1.0, "length": 1.0}
    params = {"math_answer": {"extractors": ("hashes",)}}
    rewards, parts = rollout.score_rollouts(rolls, [_problem("7"), _problem("12", 2)], 4,
                                            weights, params, length_alpha=0.5)
    correct = np.array([1, 0, 1, 0, 1, 1, 1, 0], float)
    np.testing.assert_array_equal(parts["math_answer"].ravel(), correct)
    np.testing.assert_array_equal(parts["format"].ravel(), [0, 0, -0.5, 0, 0, 0, 0, 0])
    want_len = []
    for g in range(2):
        ln, c = lengths[4 * g:4 * g + 4].astype(float), correct[4 * g:4 * g + 4]
        p = 0.5 - (ln - ln.min()) / (ln.max() - ln.min() + 1e-9)
        want_len += list(0.5 * np.where(c > 0, p, np.minimum(p, 0)))
    np.testing.assert_allclose(parts["length"].ravel(), want_len)
    np.testing.assert_allclose(rewards.ravel(), correct + parts["format"].ravel() + want_len)
    sids = rollout.sentence_ids(rolls, TOK, ".\n", per_sentence=True)
    batch = rollout.training_batch(rolls, rewards, sids, advantage_eps=1e-6)
    r = rewards.astype(np.float64)
    adv = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(batch["advantages"], adv.ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batch["mask"], np.arange(20)[None] < lengths[:, None])
    assert (batch["sentence_ids"][~batch["mask"]] == -1).all()
    # Row 0 holds "Step 1: 3 + 4 = 7.\n#" (20 tokens): pauses ".\n" only -> sentences 0 and 1.
    np.testing.assert_array_equal(batch["sentence_ids"][0, :lengths[0]], [0] * 19 + [1])
    single = rollout.sentence_ids(rolls, TOK, ".\n", per_sentence=False)
    np.testing.assert_array_equal(single, np.where(batch["mask"], 0, -1))


def test_minibatch_order_holds_whole_groups():
    order = minibatch_order(6, 4, 3, 2, jax.random.key(0))
    assert order.shape == (6, 8)
    for epoch in range(2):
        rows = np.sort(order[3 * epoch:3 * epoch + 3].ravel())
        np.testing.assert_array_equal(rows, np.arange(24))
    groups = order.reshape(6, 2, 4)
    assert (groups // 4 == groups[..., :1] // 4).all()  # a minibatch's groups are complete
    assert (groups % 4 == np.arange(4)).all()
    np.testing.assert_array_equal(order, minibatch_order(6, 4, 3, 2, jax.random.key(0)))


def test_length_reward_pool_correct_stays_bounded_with_one_correct_length():
    """Regression: correct responses of one length made l_max - l_min = 0, and the 1e-9 in the
    denominator scored longer wrong ones around -1e9 (seen as rewards of -1.6e6 in a run)."""
    from ling_jax.rl.rewards import length_score

    got = length_score([18, 18, 25, 12, 40], [True, True, False, False, False], pool="correct")
    np.testing.assert_allclose(got, [0.5, 0.5, -1.0, 0.0, -1.0])


def test_response_logprobs_under_context_parallelism_match_one_device():
    """The model returns zig-zag-ordered logits on a context axis; the response slots are found."""
    from jax.sharding import AxisType

    from ling_jax.ops.attention_context import ContextSettings, context_settings

    model = small_model()
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 256, size=(4, 32)), jnp.int32)
    segments = np.ones((4, 32), np.int32)
    segments[1, 27:] = 0  # a padded tail
    positions = jnp.broadcast_to(jnp.arange(32, dtype=jnp.int32), (4, 32))
    fn = nnx.jit(lambda m, t, p, s: rollout.response_logprobs(m, t, p, s, t[:, 20:], 20, 0.9))
    want = fn(model, tokens, positions, jnp.asarray(segments))[:2]
    mesh = jax.make_mesh((2, 4), ("data", "context"), axis_types=(AxisType.Auto,) * 2)
    with jax.set_mesh(mesh), context_settings(ContextSettings("context", ("data",))):
        got = fn(model, tokens, positions, jnp.asarray(segments))
        assert got[0].shape == (4, 12)
    for a, b in zip(want, got[:2], strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) / np.linalg.norm(a) <= 1e-5
