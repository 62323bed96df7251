"""Exact number parsing for answer checking: integers, decimals, a/b, \\frac, thousands commas.

Never `eval`. Every regex here is linear (no nested quantifiers) and ASCII-only: unicode digits
are not numbers. Numbers longer than MAX_NUMBER_CHARS and answers longer than MAX_ANSWER_CHARS
are rejected before any conversion, so adversarial strings cost microseconds, not int(10**5 digits).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction

MAX_NUMBER_CHARS = 100
MAX_ANSWER_CHARS = 512
MINUS_SIGNS = "-\u2212"  # ASCII hyphen-minus and the unicode minus sign

# One number token: optional sign, digits with commas, optional decimals, optional /denominator.
NUMBER_RE = re.compile(
    r"(?<![0-9.])[-+\u2212]?(?:[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)(?:/[0-9][0-9,]*(?:\.[0-9]+)?)?",
    re.ASCII,
)
_GROUPED_RE = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+", re.ASCII)
_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]{1,100})\}\{([^{}]{1,100})\}")
_FRAC_DIGITS_RE = re.compile(r"\\[dt]?frac([0-9])([0-9])", re.ASCII)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\{([^{}]{0,100})\}")
_DROP = ("\\!", "\\,", "\\;", "\\$", "$", "\\%", "%", "^\\circ", "^{\\circ}", "\u00b0")
_DROP += ("\\left", "\\right")
_SPACE_RE = re.compile(r"\s+")
_TIGHTEN_RE = re.compile(r"\s*/\s*|^([-+\u2212])\s+")  # "1 / 2" -> "1/2", "- 3" -> "-3"


def _unsigned(body: str) -> tuple[int, int] | None:
    """'1,234.50' -> (123450, 100) as numerator and power-of-ten scale; None for bad grouping."""
    int_part, _, frac_part = body.partition(".")
    if "," in int_part:
        if not _GROUPED_RE.fullmatch(int_part):
            return None
        int_part = int_part.replace(",", "")
    if "," in frac_part or not (int_part or frac_part):
        return None
    return int(int_part + frac_part), 10 ** len(frac_part)


def token_to_fraction(token: str) -> Fraction | None:
    """Exact value of one NUMBER_RE token, or None (too long, bad grouping, zero denominator)."""
    if len(token) > MAX_NUMBER_CHARS:
        return None
    sign = -1 if token[:1] in MINUS_SIGNS else 1
    num_s, slash, den_s = token.lstrip("+" + MINUS_SIGNS).rstrip(",").partition("/")
    num = _unsigned(num_s)
    den = _unsigned(den_s) if slash else (1, 1)
    if num is None or den is None or den[0] == 0:
        return None
    return Fraction(sign * num[0] * den[1], num[1] * den[0])


def iter_numbers(text: str) -> Iterator[Fraction]:
    """Numbers of `text` in order; a comma list like '1,2,3' gives 1, 2 and 3."""
    for m in NUMBER_RE.finditer(text):
        token = m.group()
        if len(token) > MAX_NUMBER_CHARS:
            continue
        value = token_to_fraction(token)
        if value is not None:
            yield value
        elif "," in token and "/" not in token:
            sign = token[0] if token[0] in MINUS_SIGNS else ""
            for piece in token.lstrip("+" + MINUS_SIGNS).split(","):
                if piece and (v := token_to_fraction(sign + piece)) is not None:
                    yield v
                sign = ""


def normalise_answer(text: str) -> str:
    """LaTeX/formatting noise removed: $, %, degrees, \\text{..}, \\frac{a}{b} -> a/b, braces."""
    s = text.strip()
    s = s.replace("{,}", ",")
    s = _FRAC_RE.sub(r"\1/\2", s)
    s = _FRAC_DIGITS_RE.sub(r"\1/\2", s)
    s = _TEXT_CMD_RE.sub(r" \1 ", s)
    for junk in _DROP:
        s = s.replace(junk, "")
    s = s.replace("{", "").replace("}", "")
    s = _SPACE_RE.sub(" ", s).strip().rstrip(".").strip()
    return s


def parse_number(text: str) -> Fraction | None:
    """The exact value when `text` (after normalise_answer) is one number, else None."""
    if len(text) > MAX_ANSWER_CHARS:
        return None
    s = _TIGHTEN_RE.sub(lambda m: m.group(1) or "/", normalise_answer(text))
    m = NUMBER_RE.fullmatch(s)
    return token_to_fraction(m.group()) if m else None


def answer_value(segment: str) -> Fraction | None:
    """Value of an answer segment: the whole of it, else the part after the last '=', else its
    first number ('18 dollars' -> 18, 'x = 2 + 3 = 5' -> 5)."""
    if len(segment) > MAX_ANSWER_CHARS:
        return None
    value = parse_number(segment)
    if value is not None:
        return value
    tail = normalise_answer(segment).rpartition("=")[2]
    value = parse_number(tail)
    if value is not None:
        return value
    return next(iter_numbers(tail), None)
