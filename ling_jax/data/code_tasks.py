"""Generated Python function tasks with tests: the built-in task of the code reward.

A task shows the model a signature and a one-line docstring and asks for the body:

    def add_7(x):
        \"\"\"Return x plus 7.\"\"\"
        return x + 7          <- the reference completion

Families are single operations (difficulty 1) or two chained ones (difficulty 2) on ints,
strings or int lists, with a constant in the name, so a small model can learn the name → body
mapping and held-out tasks test new constants and combinations. Tests are (arguments, expected
value) pairs computed here by a trusted Python reference of the family (never by running code
text); values are JSON-able so a sandbox can return them. Deterministic by (seed, difficulty,
index); the split is a SHA-256 bucket of the function name, so train and held-out never share a
task, whatever the seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

SPLITS = ("train", "heldout")
DIFFICULTY_LEVELS = (1, 2)
HELDOUT_BUCKETS = 5  # one bucket in five of the name-hash space is held out
NUM_TESTS = 5


@dataclasses.dataclass(frozen=True)
class CodeTask:
    """One task: `prompt` (signature + docstring) is shown, `completion` is a reference body."""

    prompt: str
    completion: str
    entry_point: str
    args: tuple  # one tuple of JSON-able arguments per test
    expected: tuple  # the JSON-able return value of each test
    difficulty: int

    @property
    def text(self) -> str:
        """The whole function as one training document."""
        return self.prompt + self.completion


@dataclasses.dataclass(frozen=True)
class _Family:
    """name(k...) → (function name, docstring, body, reference fn); `arg` is the input kind."""

    arg: str  # "x" (int), "s" (str) or "items" (list of int)
    difficulty: int
    constants: int  # how many integer constants the family draws, each in [2, high]
    make: Callable[..., tuple[str, str, str, Callable[[Any], Any]]]

    @property
    def high(self) -> int:
        return {"x": 30, "s": 5, "items": 9}[self.arg]


FAMILIES: tuple[_Family, ...] = (
    _Family("x", 1, 1, lambda k: (f"add_{k}", f"Return x plus {k}.", f"x + {k}",
                                  lambda x: x + k)),
    _Family("x", 1, 1, lambda k: (f"sub_{k}", f"Return x minus {k}.", f"x - {k}",
                                  lambda x: x - k)),
    _Family("x", 1, 1, lambda k: (f"times_{k}", f"Return x times {k}.", f"x * {k}",
                                  lambda x: x * k)),
    _Family("x", 1, 1, lambda k: (f"is_multiple_of_{k}", f"Return True if x is a multiple of "
                                  f"{k}.", f"x % {k} == 0", lambda x: x % k == 0)),
    _Family("x", 1, 1, lambda k: (f"at_most_{k}", f"Return the smaller of x and {k}.",
                                  f"min(x, {k})", lambda x: min(x, k))),
    _Family("s", 1, 1, lambda k: (f"repeat_{k}", f"Return s repeated {k} times.", f"s * {k}",
                                  lambda s: s * k)),
    _Family("items", 1, 1, lambda k: (f"first_{k}", f"Return the first {k} items.",
                                      f"items[:{k}]", lambda v: v[:k])),
    _Family("items", 1, 1, lambda k: (f"count_{k}", f"Return how many items equal {k}.",
                                      f"items.count({k})", lambda v: v.count(k))),
    _Family("x", 2, 2, lambda a, b: (f"times_{a}_plus_{b}", f"Return x times {a} plus {b}.",
                                     f"x * {a} + {b}", lambda x: x * a + b)),
    _Family("items", 2, 1, lambda k: (f"sum_plus_{k}", f"Return the sum of the items plus {k}.",
                                      f"sum(items) + {k}", lambda v: sum(v) + k)),
    _Family("items", 2, 1, lambda k: (f"keep_above_{k}", f"Return the items greater than {k}.",
                                      f"[v for v in items if v > {k}]",
                                      lambda v: [i for i in v if i > k])),
    _Family("items", 2, 1, lambda k: (f"count_above_{k}", f"Return how many items are greater "
                                      f"than {k}.", f"sum(1 for v in items if v > {k})",
                                      lambda v: sum(1 for i in v if i > k))),
)
_LETTERS = "abcdefgh"


def split_of(entry_point: str) -> str:
    """Which split a function name belongs to (hash bucket of the name)."""
    bucket = int(hashlib.sha256(entry_point.encode()).hexdigest()[:8], 16) % HELDOUT_BUCKETS
    return "heldout" if bucket == 0 else "train"


def _argument(rng: random.Random, kind: str) -> Any:
    if kind == "x":
        return rng.randint(-20, 60)
    if kind == "s":
        return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(0, 4)))
    return [rng.randint(0, 12) for _ in range(rng.randint(0, 6))]


def _generate(rng: random.Random, difficulty: int) -> CodeTask:
    family = rng.choice([f for f in FAMILIES if f.difficulty == difficulty])
    constants = [rng.randint(2, family.high) for _ in range(family.constants)]
    name, doc, body, reference = family.make(*constants)
    args = tuple((_argument(rng, family.arg),) for _ in range(NUM_TESTS))
    expected = tuple(reference(*a) for a in args)
    prompt = f'def {name}({family.arg}):\n    """{doc}"""\n'
    return CodeTask(prompt=prompt, completion=f"    return {body}\n", entry_point=name,
                    args=args, expected=expected, difficulty=difficulty)


def _check(split: str, difficulty: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"code task split {split!r} is unknown; use one of {SPLITS}")
    if difficulty not in DIFFICULTY_LEVELS:
        raise ValueError(f"code task difficulty {difficulty!r} is unknown; use one of "
                         f"{list(DIFFICULTY_LEVELS)}")


def code_task(index: int, *, split: str = "train", difficulty: int = 1, seed: int = 0) -> CodeTask:
    """Task number `index` of a split: resamples until the function name hashes into `split`."""
    _check(split, difficulty)
    for attempt in itertools.count():
        rng = random.Random(f"code:{seed}:{difficulty}:{index}:{attempt}")
        task = _generate(rng, difficulty)
        if split_of(task.entry_point) == split:
            return task
    raise AssertionError("unreachable")


def verbose_completion(task: CodeTask) -> str:
    """The reference body through a named intermediate: the same function in ~4 more tokens."""
    expression = task.completion.removeprefix("    return ")
    return f"    result = {expression}    return result\n"


def uses_verbose_body(index: int, seed: int, fraction: float) -> bool:
    """Whether document `index` shows the verbose body (a stable draw per index and seed)."""
    return fraction > 0 and random.Random(f"code_verbose:{seed}:{index}").random() < fraction


def code_tasks(split: str = "train", n: int = 100, difficulty: int | Sequence[int] = (1, 2),
               seed: int = 0) -> list[CodeTask]:
    """The first `n` tasks of a split (difficulty an int or a list cycled per task)."""
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    if not levels:
        raise ValueError("code task difficulty list is empty; give at least one level")
    return [code_task(i, split=split, difficulty=levels[i % len(levels)], seed=seed)
            for i in range(n)]


class CodeTaskSource:
    """`num_docs` generated tasks as prompt/completion records (prompt masked) or plain text.

    verbose_fraction: the share of documents whose body is `verbose_completion` (two correct
    lengths for one task: room for RL's length reward to choose the shorter one).
    """

    def __init__(self, split: str = "train", *, num_docs: int = 100_000,
                 difficulty: int | Sequence[int] = (1, 2), seed: int = 0,
                 mask_prompt: bool = True, verbose_fraction: float = 0.0,
                 name: str = "builtin_code"):
        _check(split, DIFFICULTY_LEVELS[0])
        if num_docs < 1:
            raise ValueError(f"builtin_code num_docs={num_docs} must be >= 1")
        if not 0.0 <= verbose_fraction <= 1.0:
            raise ValueError(f"builtin_code verbose_fraction={verbose_fraction} must be in [0, 1]")
        self.verbose_fraction = verbose_fraction
        self.levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
        for level in self.levels:
            _check(split, level)
        self.name, self.split, self.num_docs, self.seed = name, split, num_docs, seed
        self.mask_prompt = mask_prompt

    def __len__(self) -> int:
        return self.num_docs

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = code_task(index, split=self.split, seed=self.seed,
                         difficulty=self.levels[index % len(self.levels)])
        completion = task.completion
        if uses_verbose_body(index, self.seed, self.verbose_fraction):
            completion = verbose_completion(task)
        if self.mask_prompt:
            return {"index": index, "prompt": task.prompt, "completion": completion}
        return {"index": index, "text": task.prompt + completion}
