"""KV-cache decoding against the full forward (`LingForCausalLM.__call__`) on a random model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ling_jax.config import get_preset
from ling_jax.model import decode
from ling_jax.model.rotary import rope_cos_sin, rope_frequencies
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.ops.attention_mask import AttentionMask

PROMPT_LENGTHS = (5, 9, 2)  # left-padded to 9 in one batch


def small_config():
    cfg = get_preset("tiny")
    cfg.update(dict(hidden_size=64, num_hidden_layers=3, first_k_dense_replace=1,
                    intermediate_size=96, num_experts=8, num_experts_per_tok=2, n_group=2,
                    topk_group=1, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
                    partial_rotary_factor=0.5, initializer_range=0.08))
    return cfg


@pytest.fixture(scope="module")
def model():
    return LingForCausalLM(small_config(), rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(2, 256, size=n).tolist() for n in PROMPT_LENGTHS]


@pytest.fixture(scope="module")
def full_logits(model):
    """Full-forward logits of one unpadded row [T, V]. Causal: right-padding to one fixed length
    leaves positions < T unchanged, so one compile serves every length."""
    fn = nnx.jit(lambda m, ids: m(ids).logits)

    def run(ids):
        row = np.zeros((1, 32), np.int32)
        row[0, :len(ids)] = ids
        return np.asarray(fn(model, jnp.asarray(row))[0, :len(ids)])

    return run


def test_left_pad_layout():
    ids, lengths = decode.left_pad([[7, 8], [1, 2, 3]], pad_id=0)
    np.testing.assert_array_equal(ids, [[0, 7, 8], [1, 2, 3]])
    np.testing.assert_array_equal(lengths, [2, 3])
    with pytest.raises(ValueError, match="prompt length"):
        decode.left_pad([[1, 2, 3]], length=2)


def test_cached_logits_equal_full_forward(model, prompts, full_logits):
    """Prefill + teacher-forced decode steps reproduce every full-forward logit of each row."""
    _check_cached_logits(model, prompts, full_logits)


def test_tiled_prefill_equals_full_forward(prompts, full_logits):
    """The same with the prefill through the tiled backend (ragged 4-row tiles, left padding)."""
    cfg = small_config()
    cfg.update(dict(attention_backend="tiled", attention_block_q=4, attention_block_kv=4))
    _check_cached_logits(LingForCausalLM(cfg, rngs=nnx.Rngs(3)), prompts, full_logits)


def _check_cached_logits(model, prompts, full_logits):
    steps, rng = 6, np.random.default_rng(1)
    forced = rng.integers(2, 256, size=(len(prompts), steps)).astype(np.int32)
    ids, lengths = decode.left_pad(prompts)
    prompt_len, max_len = ids.shape[1], ids.shape[1] + steps
    prefill = nnx.jit(lambda m, i, n: decode.prefill(m, i, n, max_len))
    step = nnx.jit(decode.forward_cached)
    last, cache, key_valid = prefill(model, jnp.asarray(ids), jnp.asarray(lengths))
    got = [np.asarray(last)]
    for i in range(steps):
        positions = jnp.asarray(lengths + i)[:, None]
        logits, cache = step(model, jnp.asarray(forced[:, i:i + 1]), positions, key_valid,
                             prompt_len + i, cache)
        got.append(np.asarray(logits[:, 0]))
    got = np.stack(got, axis=1)  # [B, steps + 1, V]
    for row, prompt in enumerate(prompts):
        want = full_logits(prompt + forced[row].tolist())[len(prompt) - 1:]
        np.testing.assert_allclose(got[row], want, atol=1e-4, rtol=0)


def _reference_greedy(full_logits, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(full_logits(ids)[-1])))
    return ids[len(prompt):]


def test_greedy_equals_stepwise_argmax_of_full_forward(model, prompts, full_logits):
    n = 7
    want = [_reference_greedy(full_logits, p, n) for p in prompts]
    ids, lengths = decode.left_pad(prompts)
    sampling = decode.SamplingParams(temperature=0.0)
    run = nnx.jit(lambda m, i, n_, k: decode.generate(m, i, n_, k, max_new_tokens=n,
                                                      sampling=sampling))
    out = run(model, jnp.asarray(ids), jnp.asarray(lengths), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    np.testing.assert_array_equal(np.asarray(out.lengths), [n] * len(prompts))
    assert not np.asarray(out.finished).any()
    # Reported log-probs are log_softmax(full logits) (T = 1 for greedy) of the chosen tokens.
    for row, prompt in enumerate(prompts):
        seq = prompt + want[row]
        logp = jax.nn.log_softmax(full_logits(seq)[len(prompt) - 1:-1], axis=-1)
        np.testing.assert_allclose(out.logprobs[row], logp[np.arange(n), want[row]], atol=1e-4)


def test_stop_token_ends_row_and_pads(model, prompts, full_logits):
    """A stop token is kept and counted; later slots are pad with log-prob 0; others go on."""
    want = _reference_greedy(full_logits, prompts[0], 6)
    stop = want[2]
    sampling = decode.SamplingParams(temperature=0.0, stop_ids=(stop,), pad_id=0)
    ids, lengths = decode.left_pad(prompts)
    out = nnx.jit(lambda m, i, n_, k: decode.generate(
        m, i, n_, k, max_new_tokens=6, sampling=sampling))(
        model, jnp.asarray(ids), jnp.asarray(lengths), jax.random.key(0))
    first = want.index(stop) + 1
    assert int(out.lengths[0]) == first and bool(out.finished[0])
    np.testing.assert_array_equal(out.tokens[0, :first], want[:first])
    np.testing.assert_array_equal(out.tokens[0, first:], 0)
    np.testing.assert_array_equal(out.logprobs[0, first:], 0.0)
    assert np.all(np.asarray(out.logprobs[0, :first]) < 0)
    assert decode.generate_text_ids(model, prompts[:1], jax.random.key(0), max_new_tokens=6,
                                    sampling=sampling) == [want[:first - 1]]


def test_sampled_tokens_respect_top_k_and_report_policy_logprobs(model, prompts, full_logits):
    """T = 0.7, top-k 4: each token is in the full forward's top 4 and its log-prob is
    log_softmax(logits / 0.7) untruncated; max_steps (traced) shortens the run."""
    temp, k, n = 0.7, 4, 6
    sampling = decode.SamplingParams(temperature=temp, top_k=k)
    ids, lengths = decode.left_pad(prompts)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    run = decode.make_generate_fn(graphdef, max_new_tokens=n, sampling=sampling)
    args = (params, rest, jnp.asarray(ids), jnp.asarray(lengths), jax.random.key(5))
    out = run(*args, n)
    again = run(*args, n)
    np.testing.assert_array_equal(out.tokens, again.tokens)  # deterministic given the key
    short = run(*args, 3)
    np.testing.assert_array_equal(short.tokens[:, :3], out.tokens[:, :3])
    np.testing.assert_array_equal(short.lengths, 3)
    for row, prompt in enumerate(prompts):
        toks = np.asarray(out.tokens[row]).tolist()
        logits = full_logits(prompt + toks)[len(prompt) - 1:-1]
        for t, tok in enumerate(toks):
            assert tok in np.argsort(-logits[t])[:k]
        logp = jax.nn.log_softmax(logits / temp, axis=-1)
        np.testing.assert_allclose(out.logprobs[row], logp[np.arange(n), toks], atol=1e-4)


def _numpy_truncate(logits, top_k, top_p):
    out = logits.astype(np.float64).copy()
    for row in out:
        order = np.argsort(-row, kind="stable")
        keep = np.zeros(row.shape, bool)
        keep[order[:top_k] if top_k else order] = True
        probs = np.exp(row - row.max()) * keep
        probs /= probs.sum()
        mass = 0.0
        nucleus = np.zeros(row.shape, bool)
        for j in order:
            if keep[j] and mass < top_p:
                nucleus[j] = True
                mass += probs[j]
        row[~nucleus] = -np.inf
    return out


@pytest.mark.parametrize("top_k,top_p", [(0, 0.6), (3, 1.0), (5, 0.8), (0, 1e-6)])
def test_truncation_matches_numpy(top_k, top_p):
    logits = np.random.default_rng(2).normal(size=(4, 12)).astype(np.float32) * 2
    got = np.asarray(decode.truncate_logits(jnp.asarray(logits), top_k, top_p))
    want = _numpy_truncate(logits, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[~np.isinf(got)], logits[~np.isinf(want)])


def test_sampling_frequencies_follow_truncated_tempered_softmax():
    """20k draws of one row: empirical frequencies within 5 sigma of the nucleus distribution."""
    logits = jnp.asarray([[2.0, 1.5, 1.0, 0.2, -1.0, 0.9]])
    sampling = decode.SamplingParams(temperature=0.8, top_p=0.9)
    keys = jax.random.split(jax.random.key(7), 20_000)
    tokens, logp = jax.vmap(lambda k: decode.sample_logits(logits, k, sampling))(keys)
    scaled = np.asarray(logits[0], np.float64) / 0.8
    want = _numpy_truncate(scaled[None], 0, 0.9)[0]
    p = np.exp(want - want.max())
    p /= p.sum()
    freq = np.bincount(np.asarray(tokens[:, 0]), minlength=6) / tokens.shape[0]
    sigma = np.sqrt(p * (1 - p) / tokens.shape[0])
    assert np.all(np.abs(freq - p) <= 5 * sigma + 1e-12), (freq, p)
    full = scaled - np.log(np.exp(scaled).sum())
    np.testing.assert_allclose(logp[:, 0], full[np.asarray(tokens[:, 0])], atol=1e-5)


def test_bad_sampling_params_raise():
    with pytest.raises(ValueError, match="top_p"):
        decode.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        decode.SamplingParams(temperature=-1.0)


def test_group_prefill_once_equals_repeated_prompts(model, prompts, full_logits):
    """group_size=G prefills each prompt once and decodes G rows per prompt: greedy tokens equal
    the stepwise argmax of the full forward (the reference), log-probs those of the repeated-prompt
    batch; a sampled group shares the prompt but not the draws."""
    n, group = 5, 2
    ids, lengths = decode.left_pad(prompts)
    args = (jnp.asarray(ids), jnp.asarray(lengths), jax.random.key(0))
    greedy = decode.SamplingParams(temperature=0.0)
    run = nnx.jit(lambda m, i, lens, k: decode.generate(m, i, lens, k, max_new_tokens=n,
                                                     sampling=greedy, group_size=group))
    out = run(model, *args)
    want = [_reference_greedy(full_logits, p, n) for p in prompts for _ in range(group)]
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    flat = nnx.jit(lambda m, i, lens, k: decode.generate(m, i, lens, k, max_new_tokens=n,
                                                      sampling=greedy))
    rep = flat(model, jnp.repeat(args[0], group, 0), jnp.repeat(args[1], group, 0), args[2])
    np.testing.assert_allclose(out.logprobs, rep.logprobs, atol=1e-5, rtol=0)
    hot = decode.SamplingParams(temperature=5.0)
    sampled = nnx.jit(lambda m, i, lens, k: decode.generate(m, i, lens, k, max_new_tokens=n,
                                                         sampling=hot, group_size=group))(
        model, *args)
    tokens = np.asarray(sampled.tokens).reshape(len(prompts), group, n)
    assert any((t[0] != t[1]).any() for t in tokens)


@pytest.mark.parametrize("unroll", [False, True])
def test_bfloat16_cache_scan_is_bitwise_a_plain_scan(unroll):
    """`_stack_cached` reads bf16 weights and cache as raw bits, scanned or unrolled (XLA:CPU):
    bit-identical to a plain scan."""
    cfg = small_config()
    cfg.update(dict(dtype="bfloat16", param_dtype="bfloat16"))
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(4))
    batch, length = 3, 10
    cache = decode.init_cache(model, batch, length)["moe_layers"]
    rng = np.random.default_rng(1)
    cache = tuple(jnp.asarray(rng.standard_normal(c.shape), jnp.bfloat16) for c in cache)
    x = jnp.asarray(rng.standard_normal((batch, 1, cfg.hidden_size)), jnp.bfloat16)
    positions = jnp.full((batch, 1), 6, jnp.int32)
    inv_freq, scaling = rope_frequencies(cfg)
    cos, sin = rope_cos_sin(positions, inv_freq, scaling, jnp.bfloat16)
    mask = AttentionMask(jnp.ones((batch, 1), jnp.int32), jnp.ones((batch, length), jnp.int32), 6)

    def plain(stack, x, kv):
        graphdef, state = nnx.split(stack)

        def body(x, xs):
            layer_state, k, v = xs
            x, k, v = decode._layer_cached(nnx.merge(graphdef, layer_state), x, cos, sin, mask,
                                           k, v, 6)
            return x, (k, v)

        return jax.lax.scan(body, x, (state, *kv))

    bits = nnx.jit(lambda s, x, kv: decode._stack_cached(
        decode.frozen_stacks(s)["moe_layers"], x, cos, sin, mask, kv, 6, unroll=unroll))
    want, got = nnx.jit(plain)(model.moe_layers, x, cache), bits(model, x, cache)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_bfloat16_generation_is_the_same_scanned_or_unrolled(prompts, monkeypatch):
    """Greedy tokens and their log-probs in bf16: unrolled decoding (XLA:CPU) is bit-identical to
    the scanned layers."""
    cfg = small_config()
    cfg.update(dict(dtype="bfloat16", param_dtype="bfloat16"))
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(5))
    ids, lengths = decode.left_pad(prompts)
    out = {}
    for unroll in (False, True):
        monkeypatch.setattr(decode, "unroll_layers", lambda unroll=unroll: unroll)
        run = nnx.jit(lambda m, i, n: decode.generate(
            m, i, n, jax.random.key(0), max_new_tokens=6,
            sampling=decode.SamplingParams(temperature=0.0)))
        out[unroll] = jax.device_get(run(model, jnp.asarray(ids), jnp.asarray(lengths)))
    np.testing.assert_array_equal(out[True].tokens, out[False].tokens)
    np.testing.assert_array_equal(out[True].logprobs, out[False].logprobs)
