"""Generated arithmetic word problems with step-by-step reasoning and a verifiable final answer.

Deterministic by (seed, difficulty, index). The split of a problem is a function of its question
text alone (a SHA-256 bucket), so "train" and "heldout" never share a problem, whatever the seeds.
Used as mid-training documents (prompt loss-masked) and as RL prompts with ground-truth answers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import re
from collections.abc import Sequence

SPLITS = ("train", "heldout")
ANSWER_PREFIX = "####"
HELDOUT_BUCKETS = 10  # one bucket in ten of the question-hash space is held out
# difficulty -> (number of operations, largest operand / start value)
DIFFICULTY_LEVELS: dict[int, tuple[int, int]] = {1: (1, 10), 2: (2, 20), 3: (3, 50), 4: (4, 100),
                                                 5: (5, 500)}

_NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jo", "Kemal",
          "Lena", "Mia", "Noor", "Omar", "Priya")
_ITEMS = ("apples", "marbles", "stamps", "coins", "books", "pencils", "shells", "stickers",
          "cookies", "cards", "beads", "plums")
_ANSWER_RE = re.compile(rf"{ANSWER_PREFIX}\s*(-?\d+)")


@dataclasses.dataclass(frozen=True)
class ArithmeticProblem:
    """One problem: `prompt` is shown to the model, `completion` is the reference reasoning."""

    prompt: str
    completion: str
    answer: str
    difficulty: int

    @property
    def text(self) -> str:
        """The whole problem as one pre-training document."""
        return self.prompt + self.completion


def split_of(question: str) -> str:
    """Which split a question belongs to (hash bucket of the question text)."""
    bucket = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % HELDOUT_BUCKETS
    return "heldout" if bucket == 0 else "train"


def _step(rng: random.Random, value: int, limit: int, name: str) -> tuple[str, str, int]:
    """One operation: (sentence, worked line, new value); keeps values non-negative and exact."""
    ops = ["add"]
    if value >= 1:
        ops.append("sub")
    if 2 * value <= 10 * limit:
        ops.append("mul")
    divisors = [k for k in range(2, 10) if value > 0 and value % k == 0]
    if divisors:
        ops.append("div")
    op = rng.choice(ops)
    if op == "add":
        k = rng.randint(1, limit)
        return f"Then {name} finds {k} more.", f"{value} + {k} = {value + k}", value + k
    if op == "sub":
        k = rng.randint(1, min(value, limit))
        return f"Then {name} gives away {k}.", f"{value} - {k} = {value - k}", value - k
    if op == "mul":
        k = rng.randint(2, max(2, min(5, (10 * limit) // max(value, 1))))
        sentence = f"Then the pile grows to {k} times its size."
        return sentence, f"{value} * {k} = {value * k}", value * k
    k = rng.choice(divisors)
    sentence = f"Then {name} splits them into {k} equal groups and keeps one group."
    return sentence, f"{value} / {k} = {value // k}", value // k


def _generate(rng: random.Random, difficulty: int) -> ArithmeticProblem:
    """A candidate problem of the given difficulty from a seeded RNG."""
    num_steps, limit = DIFFICULTY_LEVELS[difficulty]
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(1, limit)
    sentences, lines = [f"{name} has {value} {item}."], [f"Start: {value}."]
    for i in range(num_steps):
        sentence, worked, value = _step(rng, value, limit, name)
        sentences.append(sentence)
        lines.append(f"Step {i + 1}: {worked}.")
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    completion = "\n".join(lines) + f"\n{ANSWER_PREFIX} {value}"
    return ArithmeticProblem(prompt=f"Question: {question}\nAnswer:\n", completion=completion,
                             answer=str(value), difficulty=difficulty)


def _check(split: str, difficulty: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"arithmetic split {split!r} is unknown; use one of {SPLITS}")
    if difficulty not in DIFFICULTY_LEVELS:
        raise ValueError(f"arithmetic difficulty {difficulty!r} is unknown; use one of "
                         f"{sorted(DIFFICULTY_LEVELS)}")


def arithmetic_problem(index: int, *, split: str = "train", difficulty: int = 2,
                       seed: int = 0) -> ArithmeticProblem:
    """Problem number `index` of a split: resamples until the question hashes into `split`."""
    _check(split, difficulty)
    for attempt in itertools.count():
        # str seeds go through SHA-512 in `random`, stable across runs and Python versions.
        rng = random.Random(f"{seed}:{difficulty}:{index}:{attempt}")
        problem = _generate(rng, difficulty)
        if split_of(problem.prompt) == split:
            return problem
    raise AssertionError("unreachable")


def difficulty_at(index: int, difficulty: int | Sequence[int]) -> int:
    """Difficulty of problem `index`: an int, or levels cycled by index."""
    if isinstance(difficulty, int):
        return difficulty
    levels = list(difficulty)
    if not levels:
        raise ValueError("arithmetic difficulty list is empty; give at least one level")
    return int(levels[index % len(levels)])


def arithmetic_problems(split: str = "train", n: int = 100, difficulty: int | Sequence[int] = 2,
                        seed: int = 0) -> list[ArithmeticProblem]:
    """The first `n` problems of a split (difficulty an int or a list cycled per problem)."""
    return [arithmetic_problem(i, split=split, difficulty=difficulty_at(i, difficulty), seed=seed)
            for i in range(n)]


def extract_answer(text: str) -> str | None:
    """The final answer of a completion (the last '#### N'), or None when there is none."""
    found = _ANSWER_RE.findall(text)
    return found[-1] if found else None
