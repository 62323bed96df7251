"""math_answer: extraction, exact number equality, and safety on adversarial strings."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest

from ling_jax.rl.rewards import RolloutGroup, extract_answer, is_correct, math_answer_reward
from ling_jax.rl.rewards.numbers import parse_number

TIME_LIMIT_S = 0.1


@pytest.mark.parametrize(
    "text, value",
    [
        ("0.5", Fraction(1, 2)),
        ("1/2", Fraction(1, 2)),
        ("-3", Fraction(-3)),
        ("\u22123", Fraction(-3)),  # unicode minus
        ("1,000", Fraction(1000)),
        ("1,234,567.25", Fraction(123456725, 100)),
        ("$1,000.", Fraction(1000)),
        (".75", Fraction(3, 4)),
        ("+7", Fraction(7)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\dfrac{10}{4}", Fraction(-5, 2)),
        ("\\frac12", Fraction(1, 2)),
        ("50\\%", Fraction(50)),
        ("1 / 3", Fraction(1, 3)),
        ("007", Fraction(7)),
        ("1,00", None),  # not a thousands grouping
        ("1/0", None),
        ("1 2", None),
        ("abc", None),
        ("", None),
        ("\u0663", None),  # Arabic-Indic three: unicode digits are not numbers
        ("\uff13", None),  # full-width three
        ("1e5", None),
        ("9" * 101, None),  # over MAX_NUMBER_CHARS
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "answer, reference, equal",
    [
        ("0.5", "1/2", True),
        ("1,000", "1000", True),
        ("-3", "3", False),
        ("3", "-3", False),
        ("2.50", "5/2", True),
        ("\\frac{1}{3}", "0.3333", False),
        ("0.1", "1/10", True),
        ("1000", "1,000.0", True),
        ("12", "12.000001", False),
        ("-0", "0", True),
    ],
)
def test_number_equality_is_exact(answer, reference, equal):
    assert is_correct(f"So #### {answer}", reference) is equal
    assert is_correct(f"\\boxed{{{answer}}}", reference) is equal


@pytest.mark.parametrize(
    "completion, segment",
    [
        ("work... \\boxed{\\frac{1}{2}} and #### 7", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{{2}}", "{2}"),
        ("steps\n#### 42\n", "42"),
        ("so the answer is 17 apples.\nbye", "17 apples."),
        ("**Answer:** 3/4", "3/4"),
        ("The final answer is: $5$", "$5$"),
        ("we get 3 then 4, finally 5 and 6.", "6"),
        ("numbers 1,2,3", "3"),
        ("no digits here", None),
        ("\\boxed{unclosed 5", "5"),  # a malformed box falls through to the next extractor
    ],
)
def test_extract_answer(completion, segment):
    assert extract_answer(completion) == segment


def test_extractor_order_and_fallback_are_configurable():
    text = "The answer is 3. Actually 4"
    assert extract_answer(text) == "3. Actually 4"
    assert extract_answer(text, extractors=("last_number",)) == "4"
    assert extract_answer("we get 4", extractors=("boxed", "hashes", "answer_is")) is None
    assert is_correct("we get 4", "4") and not is_correct("we get 4", "4", extractors=("boxed",))
    with pytest.raises(ValueError, match="extractors"):
        extract_answer(text, extractors=("regex_magic",))


@pytest.mark.parametrize(
    "completion, reference, correct",
    [
        ("... so x = 2 + 3 = 5\n#### x = 5", "5", True),
        ("The answer is 18 dollars.", "18", True),
        ("The answer is 18 dollars.", "19", False),
        ("\\boxed{18\\text{ dollars}}", "18", True),
        ("\\boxed{x^2+1}", "x^2 + 1", True),  # non-numeric references compare as strings
        ("\\boxed{x^2+2}", "x^2 + 1", False),
        ("The answer is 1,000,000", "1000000", True),
    ],
)
def test_is_correct(completion, reference, correct):
    assert is_correct(completion, reference) is correct


def test_reward_vector():
    group = RolloutGroup(["#### 4", "#### 5", "nothing", "\\boxed{4.0}"], reference="4")
    np.testing.assert_array_equal(math_answer_reward(group), [1.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="reference"):
        math_answer_reward(RolloutGroup(["#### 4"]))


ADVERSARIAL = {
    "100k-digit number": "1" * 100_000,
    "100k digits then answer": "9" * 100_000 + " #### 5",
    "100k-digit boxed": "\\boxed{" + "7" * 100_000 + "}",
    "100k-digit reference bait": "#### " + "5" * 100_000,
    "10k nested braces in box": "\\boxed{" + "{" * 10_000 + "5" + "}" * 10_000,
    "10k nested braces around": "{" * 10_000 + "\\boxed{5}" + "}" * 10_000,
    "10k boxes": "\\boxed{" * 10_000,
    "many ####": "#### " * 50_000,
    "many #### no space": "####" * 50_000 + "5",
    "NUL bytes": "\x00" * 50_000 + "#### 5\x00\x00",
    "unicode digits": "\u0663\u0664 \uff15 \u00bd \u2075 " * 20_000,
    "surrogates and emoji": "\ud800\udfff\U0001f600" * 20_000 + " the answer is 5",
    "answer spam": "the answer is " * 20_000,
    "answer then spaces": ("answer" + " " * 60) * 2_000,
    "comma list": "1," * 60_000,
    "dot list": "1." * 60_000,
    "slash chain": "1/" * 60_000,
    "zero denominators": "1/0 " * 40_000,
    "frac spam": "\\frac{" * 20_000 + "1}{2}",
    "minus run": "-" * 100_000 + "5",
    "huge exponent": "1e999999999 2**99999999 10^^99",
    "1 MB of text": "The quick brown fox. " * 50_000 + "#### 5",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_strings_are_fast_and_never_raise(name):
    completion = ADVERSARIAL[name]
    for reference in ("5", "1/2", "x^2", "9" * 10_000, ""):
        start = time.perf_counter()
        result = is_correct(completion, reference)
        elapsed = time.perf_counter() - start
        assert isinstance(result, bool)
        assert elapsed < TIME_LIMIT_S, f"{name}: {elapsed:.3f} s with reference {reference[:8]!r}"
    start = time.perf_counter()
    extract_answer(completion)
    parse_number(completion)
    assert time.perf_counter() - start < TIME_LIMIT_S


def test_huge_numbers_are_rejected_not_converted():
    assert not is_correct("#### " + "5" * 100_000, "5" * 100_000)
    assert extract_answer("1" * 100_000) is None
    assert not is_correct("\\boxed{" + "1" * 5000 + "}", "1" * 5000)
