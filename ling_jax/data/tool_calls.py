"""A generated tool-calling task: pick the right function among a few schemas and fill its typed
arguments from a request.

Example i of (split, seed) offers `num_tools` schemas (the right one among distractors, in random
order); the user asks in words; the assistant answers with one tool call, the tool replies, the
assistant closes with a short sentence. Deterministic by (split, seed, index). The split of an
example is a function of its request text alone (a SHA-256 bucket), so "train" and "heldout" never
share a request, whatever the seeds. Schemas are kept short for small models:
{"name": str, "parameters": {arg: type}}, where a type is "string" | "integer" | "number" |
"boolean" or a list of allowed strings (an enum); every argument is required.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from typing import Any

SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 5  # one bucket in five of the request-hash space is held out

_CITIES = ("Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Rome", "Delhi", "Quito", "Berlin", "Seoul")
_PEOPLE = ("Ada", "Ben", "Chen", "Dana", "Eli", "Farah", "Gus", "Hana", "Ivan", "Mia")
_CURRENCIES = ("usd", "eur", "gbp", "yen")


def _schema(name: str, **parameters: str | list[str]) -> dict[str, Any]:
    return {"name": name, "parameters": parameters}


# name -> (schema, generator of (request, arguments))
def _weather(rng: random.Random) -> tuple[str, dict[str, Any]]:
    city, unit = rng.choice(_CITIES), rng.choice(("celsius", "fahrenheit"))
    return rng.choice(("Weather in {c} in {u}?", "How warm is {c}, in {u}?")).format(
        c=city, u=unit), {"city": city, "unit": unit}


def _timer(rng: random.Random) -> tuple[str, dict[str, Any]]:
    minutes = rng.randint(1, 90)
    return rng.choice(("Set a timer for {m} minutes.", "Start a {m} minute timer.")).format(
        m=minutes), {"minutes": minutes}


def _convert(rng: random.Random) -> tuple[str, dict[str, Any]]:
    amount = rng.randint(1, 400) / rng.choice((1, 2, 4))
    currency = rng.choice(_CURRENCIES)
    return rng.choice(("Convert {a} to {c}.", "How much is {a} in {c}?")).format(
        a=amount, c=currency), {"amount": amount, "currency": currency}


def _message(rng: random.Random) -> tuple[str, dict[str, Any]]:
    person, urgent = rng.choice(_PEOPLE), rng.random() < 0.5
    request = ("Send an urgent message to {p}." if urgent else "Send a message to {p}.")
    return request.format(p=person), {"to": person, "urgent": urgent}


def _table(rng: random.Random) -> tuple[str, dict[str, Any]]:
    people, city = rng.randint(1, 12), rng.choice(_CITIES)
    return rng.choice(("Book a table for {n} in {c}.", "Reserve dinner for {n} in {c}.")).format(
        n=people, c=city), {"people": people, "city": city}


FUNCTIONS: dict[str, tuple[dict[str, Any], Callable[[random.Random], tuple[str, dict]]]] = {
    "get_weather": (_schema("get_weather", city="string",
                            unit=["celsius", "fahrenheit"]), _weather),
    "set_timer": (_schema("set_timer", minutes="integer"), _timer),
    "convert": (_schema("convert", amount="number", currency=list(_CURRENCIES)), _convert),
    "send_message": (_schema("send_message", to="string", urgent="boolean"), _message),
    "book_table": (_schema("book_table", people="integer", city="string"), _table),
}


@dataclasses.dataclass(frozen=True)
class ToolCallExample:
    """One example: the offered schemas, the request, and the expected call."""

    tools: list[dict[str, Any]]
    request: str
    name: str
    arguments: dict[str, Any]

    @property
    def prompt_messages(self) -> list[dict[str, Any]]:
        """The conversation up to the tool call (what an evaluated model sees)."""
        return [{"role": "user", "content": self.request}]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The whole training conversation: request, call, tool result, closing answer."""
        call = {"name": self.name, "arguments": self.arguments}
        return [*self.prompt_messages,
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": '{"ok": true}'},
                {"role": "assistant", "content": "Done."}]

    @property
    def schema(self) -> dict[str, Any]:
        return FUNCTIONS[self.name][0]


def split_of(request: str) -> str:
    """Which split a request belongs to (hash bucket of its text)."""
    bucket = int(hashlib.sha256(request.encode()).hexdigest()[:8], 16) % HELDOUT_BUCKETS
    return "heldout" if bucket == 0 else "train"


def tool_call_example(index: int, *, split: str = "train", seed: int = 0,
                      num_tools: int = 3) -> ToolCallExample:
    """Example `index` of a split: draws until the request falls in that split."""
    if split not in SPLITS:
        raise ValueError(f"tool-call split {split!r} is unknown; use one of {SPLITS}")
    if not 1 <= num_tools <= len(FUNCTIONS):
        raise ValueError(f"num_tools={num_tools} must be in [1, {len(FUNCTIONS)}]")
    rng = random.Random(f"tool_calls:{seed}:{split}:{index}")
    names = sorted(FUNCTIONS)
    while True:
        name = rng.choice(names)
        request, arguments = FUNCTIONS[name][1](rng)
        if split_of(request) == split:
            break
    offered = [name, *rng.sample([n for n in names if n != name], num_tools - 1)]
    rng.shuffle(offered)
    return ToolCallExample([FUNCTIONS[n][0] for n in offered], request, name, arguments)


def tool_call_examples(split: str, n: int, *, seed: int = 0,
                       num_tools: int = 3) -> list[ToolCallExample]:
    return [tool_call_example(i, split=split, seed=seed, num_tools=num_tools) for i in range(n)]


class ToolCallSource:
    """`num_docs` generated conversations as {"index", "messages", "tools"} records."""

    def __init__(self, split: str = "train", *, num_docs: int = 100_000, seed: int = 0,
                 num_tools: int = 3, name: str = "builtin_tool_calls"):
        tool_call_example(0, split=split, seed=seed, num_tools=num_tools)  # validates early
        if num_docs < 1:
            raise ValueError(f"builtin_tool_calls num_docs={num_docs} must be >= 1")
        self.name, self.split, self.num_docs = name, split, num_docs
        self.seed, self.num_tools = seed, num_tools

    def __len__(self) -> int:
        return self.num_docs

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = tool_call_example(index, split=self.split, seed=self.seed, num_tools=self.num_tools)
        return {"index": index, "messages": ex.messages, "tools": ex.tools}
