"""Held-out statistics: Wilson interval, paired difference CI, the before/after report."""

import math

import numpy as np
import pytest

from ling_jax.rl.evaluation import (
    describe,
    describe_change,
    heldout_change,
    paired_difference,
    phase_response_tokens,
    wilson_interval,
)


@pytest.mark.parametrize("k,n,low,high", [
    # Textbook values of the 95% Wilson score interval.
    (5, 10, 0.2366, 0.7634),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),
])
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_paired_difference_matches_numpy_t_free_formula():
    rng = np.random.default_rng(3)
    before = rng.random(300) < 0.4
    after = np.where(rng.random(300) < 0.2, ~before, before)
    d = after.astype(np.float64) - before.astype(np.float64)
    half = 1.959963984540054 * d.std(ddof=1) / math.sqrt(d.size)
    diff, lo, hi = paired_difference(before, after)
    assert diff == pytest.approx(d.mean(), abs=1e-12)
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)


def test_phase_response_tokens_pairs_the_first_and_last_evaluation():
    rows = [{"heldout_rl_steps": 0, "heldout_response_tokens": [9, 12, 10]},
            {"heldout_rl_steps": 2, "heldout_response_tokens": [8, 8, 8]},
            {"heldout_response_tokens_end": [7, 11, 6]}]
    assert phase_response_tokens(rows) == ([9, 12, 10], [7, 11, 6])
    assert phase_response_tokens(rows[:2]) is None
    diff, lo, hi = paired_difference(*phase_response_tokens(rows))
    d = np.array([-2.0, -1.0, -4.0])
    half = 1.959963984540054 * d.std(ddof=1) / math.sqrt(3)
    assert (diff, lo, hi) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))


def test_heldout_change_fields_and_report_line():
    before = [1, 0, 0, 1, 0, 0, 1, 0]
    after = [1, 1, 0, 1, 1, 0, 1, 0]
    change = heldout_change(before, after)
    diff, lo, hi = paired_difference(before, after)
    assert change == {"heldout_before": 0.375, "heldout_after": 0.625, "heldout_delta": diff,
                      "heldout_delta_low": lo, "heldout_delta_high": hi, "heldout_n": 8.0}
    line = describe_change(before, after)
    assert line.startswith(f"held-out exact match {describe(before)} -> {describe(after)}")
    assert f"{diff:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})" in line and "n=8" in line
    with pytest.raises(ValueError, match="same problems"):
        heldout_change(before, after[:-1])


def test_grader_finds_every_reference_answer_after_a_bpe_round_trip(tmp_path):
    """The held-out grader scores each reference solution correct once encoded, given an EOS and
    decoded by a byte-level BPE like the built-in one: no correct answer is lost to tokenization."""
    from ling_jax.data import builtin_tokenizer
    from ling_jax.data.arithmetic import arithmetic_problems
    from ling_jax.rl.evaluation import exact_match

    tok = builtin_tokenizer(600, tmp_path, max_bytes=300_000)
    for split in ("train", "heldout"):
        problems = arithmetic_problems(split, 150, difficulty=(1, 2, 3, 4, 5), seed=7)
        texts = [tok.decode(tok.encode(p.completion) + [tok.eos_id]) for p in problems]
        assert exact_match(texts, problems).all()
        wrong = [t.replace(f"#### {p.answer}", f"#### {int(p.answer) + 1}")
                 for t, p in zip(texts, problems, strict=True)]
        assert not exact_match(wrong, problems).any()


def test_greedy_eval_reports_correctness_and_response_tokens():
    """A stand-in generator answers every other problem right with responses of known lengths."""
    import types

    from ling_jax.data.arithmetic import arithmetic_problems
    from ling_jax.rl.evaluation import greedy_eval
    from tests.rl.rl_fixtures import CharTokenizer

    tok = CharTokenizer()
    problems = arithmetic_problems("heldout", 6, difficulty=1)
    texts = [f"#### {p.answer}" if i % 2 == 0 else "#### -1 and more words" for i, p in
             enumerate(problems)]

    def generate_fn(params, biases, ids, lengths, key, max_steps):
        assert ids.shape == (6, 160)
        rows = np.full((6, 40), tok.pad_id, np.int32)
        for i, t in enumerate(texts):
            rows[i, :len(t)] = tok.encode(t)
        return types.SimpleNamespace(tokens=rows, lengths=np.array([len(t) for t in texts]))

    correct, tokens = greedy_eval(generate_fn, None, None, tok, problems, max_prompt_tokens=160,
                                  max_steps=40, pad_id=tok.pad_id)
    assert correct.tolist() == [True, False] * 3
    assert tokens.tolist() == [len(t) for t in texts]
    line = describe_change([0, 1, 0, 0], [1, 1, 0, 1], tokens=(31.25, 18.0))
    assert line.endswith("; mean response tokens 31.2 -> 18.0")
