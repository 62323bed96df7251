"""Arithmetic problems: answers recomputed from the question text, splits, determinism."""

import re

import pytest

from ling_jax.data.arithmetic import (
    DIFFICULTY_LEVELS,
    arithmetic_problem,
    arithmetic_problems,
    extract_answer,
)

_START = re.compile(r"Question: (\w+) has (\d+) (\w+)\.")
_OPS = [
    (re.compile(r"Then \w+ finds (\d+) more\."), lambda v, k: v + k),
    (re.compile(r"Then \w+ gives away (\d+)\."), lambda v, k: v - k),
    (re.compile(r"Then the pile grows to (\d+) times its size\."), lambda v, k: v * k),
    (re.compile(r"Then \w+ splits them into (\d+) equal groups and keeps one group\."),
     lambda v, k: v // k if v % k == 0 else None),
]


def solve(prompt: str) -> tuple[int, int]:
    """Independent solver: (answer, number of operations) read off the question."""
    match = _START.match(prompt)
    assert match, prompt
    value, rest, steps = int(match.group(2)), prompt[match.end():], 0
    while True:
        rest = rest.lstrip()
        for pattern, apply in _OPS:
            m = pattern.match(rest)
            if m:
                value = apply(value, int(m.group(1)))
                assert value is not None and value >= 0, prompt
                rest, steps = rest[m.end():], steps + 1
                break
        else:
            assert rest.startswith("How many"), rest
            return value, steps


@pytest.mark.parametrize("difficulty", sorted(DIFFICULTY_LEVELS))
def test_answers_match_independent_solution(difficulty):
    for split in ("train", "heldout"):
        for problem in arithmetic_problems(split, 150, difficulty, seed=3):
            answer, steps = solve(problem.prompt)
            assert problem.answer == str(answer)
            assert extract_answer(problem.completion) == str(answer)
            assert steps == DIFFICULTY_LEVELS[difficulty][0]
            assert problem.difficulty == difficulty
            # Each worked line is correct arithmetic.
            for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", problem.completion):
                a, b, c = int(a), int(b), int(c)
                assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == c


def test_splits_are_disjoint_across_seeds_and_difficulties():
    train = {p.prompt for s in (0, 1) for p in arithmetic_problems("train", 2000, [1, 2], seed=s)}
    heldout = {p.prompt for s in (0, 7) for p in arithmetic_problems("heldout", 2000, [1, 2], s)}
    assert len(heldout) > 1000 and len(train) > 2000  # many distinct problems, not one repeated
    assert not train & heldout


def test_deterministic_and_seeded():
    assert arithmetic_problems("train", 20, 3, seed=5) == arithmetic_problems("train", 20, 3, 5)
    assert arithmetic_problems("train", 20, 3, seed=5) != arithmetic_problems("train", 20, 3, 6)
    assert arithmetic_problem(11, split="heldout", difficulty=2, seed=1) == \
        arithmetic_problems("heldout", 12, 2, seed=1)[11]


def test_difficulty_list_cycles_and_magnitudes_grow():
    problems = arithmetic_problems("train", 9, [1, 3, 5], seed=0)
    assert [p.difficulty for p in problems] == [1, 3, 5] * 3
    def starts(level):
        return [int(_START.match(p.prompt).group(2))
                for p in arithmetic_problems("train", 200, level, seed=0)]

    assert max(starts(1)) <= DIFFICULTY_LEVELS[1][1] < max(starts(5)) <= DIFFICULTY_LEVELS[5][1]


def test_extract_answer_and_bad_arguments():
    assert extract_answer("Step 1: 2 + 2 = 4.\n#### 4") == "4"
    assert extract_answer("#### 3 then #### -12") == "-12"
    assert extract_answer("The answer is unclear.") is None
    with pytest.raises(ValueError, match="split"):
        arithmetic_problems("validation", 1)
    with pytest.raises(ValueError, match="difficulty"):
        arithmetic_problems("train", 1, difficulty=9)
