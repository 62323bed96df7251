"""Sentence ids per response token for LPO [reference §7.3]: split the detokenised text at pauses.

Rules, on the characters of the decoded response:
* a sentence ends after a run of pause characters (default `. ! ? ; :`, newline, CJK `。！？；`)
  and the whitespace/pause characters that directly follow it ("?!", "...", ".\\n\\n");
  the next other character starts a new sentence;
* `.`/`:`/`,` between two ASCII digits ("3.14", "10:30") is no pause (configurable);
* a token belongs to the sentence of its first non-whitespace character (whitespace-only tokens:
  of their first character), so the token holding the punctuation closes its sentence and
  " Next" opens the following one;
* an empty token (e.g. the first bytes of a multi-byte character) belongs to the sentence of the
  next token with text; trailing empty tokens (EOS) join the last sentence;
* text after the last pause (no final punctuation) is a sentence of its own.
Ids count 0, 1, ... per response without gaps; -1 marks tokens outside the response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_PAUSE_CHARS = ".!?;:\n。！？；"
DIGIT_SEPARATORS = ".:,"
REPLACEMENT_CHAR = "\ufffd"
Decode = Callable[[list[int]], str]


def _is_ascii_digit(c: str) -> bool:
    return len(c) == 1 and "0" <= c <= "9"


def _char_sentence_ids(text: str, pause_chars: str, keep_number_separators: bool) -> np.ndarray:
    """Sentence id of every character of `text` (not yet compacted)."""
    pauses = frozenset(pause_chars)
    ids = np.zeros(len(text), dtype=np.int64)
    sid, closing = 0, False
    for i, c in enumerate(text):
        is_pause = c in pauses
        if is_pause and keep_number_separators and c in DIGIT_SEPARATORS:
            # A decimal point / clock colon / thousands comma between digits is no pause.
            prev, nxt = text[i - 1 : i], text[i + 1 : i + 2]
            is_pause = not (_is_ascii_digit(prev) and _is_ascii_digit(nxt))
        if closing and not is_pause and not c.isspace():
            sid, closing = sid + 1, False
        closing = closing or is_pause
        ids[i] = sid
    return ids


def sentence_ids_from_pieces(
    pieces: Sequence[str],
    *,
    pause_chars: str = DEFAULT_PAUSE_CHARS,
    keep_number_separators: bool = True,
) -> np.ndarray:
    """Sentence id (int32, 0-based, gap-free) of each token given its decoded text piece."""
    text = "".join(pieces)
    char_ids = _char_sentence_ids(text, pause_chars, keep_number_separators)
    out = np.zeros(len(pieces), dtype=np.int64)
    pending: list[int] = []  # empty tokens waiting for the next text
    last = 0
    start = 0
    for k, piece in enumerate(pieces):
        if not piece:
            pending.append(k)
            continue
        stripped = len(piece) - len(piece.lstrip())
        anchor = start + (stripped if stripped < len(piece) else 0)
        out[k] = last = char_ids[anchor]
        out[pending] = last  # empty tokens are the start of this token's text
        pending.clear()
        start += len(piece)
    out[pending] = last
    # Compact to 0, 1, ... (ids are non-decreasing; some may have no anchor token).
    _, compact = np.unique(out, return_inverse=True)
    return compact.astype(np.int32)


def token_pieces(token_ids: Sequence[int], decode: Decode, *, context: int = 4) -> list[str]:
    """Text each token adds to the decoded response (incremental, O(T) short decodes).

    Each step decodes a window starting `context` tokens back so tokenizers that drop a leading
    space when decoding alone still produce it; a token that ends inside a multi-byte character
    (the decode ends in U+FFFD) gets "" and its text arrives with the token completing it.
    """
    ids = [int(t) for t in token_ids]
    pieces: list[str] = []
    prefix, read = 0, 0  # window start; end of the text already handed out
    for k in range(len(ids)):
        before = decode(ids[prefix:read]) if read > prefix else ""
        after = decode(ids[prefix : k + 1])
        if len(after) > len(before) and not after.endswith(REPLACEMENT_CHAR):
            pieces.append(after[len(before) :])
            prefix, read = max(0, k + 1 - context), k + 1
        else:
            pieces.append("")
    return pieces


def response_sentence_ids(
    tokens: Sequence[int] | np.ndarray,
    response_mask: Sequence[bool] | np.ndarray,
    decode: Decode,
    *,
    pause_chars: str = DEFAULT_PAUSE_CHARS,
    keep_number_separators: bool = True,
) -> np.ndarray:
    """Sentence ids int32 [T] of one row: the response tokens (mask true) in order, -1 elsewhere."""
    tokens, mask = np.asarray(tokens), np.asarray(response_mask).astype(bool)
    if tokens.ndim != 1 or mask.shape != tokens.shape:
        raise ValueError(
            f"tokens and response_mask must be one row [T] each, got {tokens.shape}, {mask.shape}"
        )
    out = np.full(tokens.shape, -1, dtype=np.int32)
    if mask.any():
        pieces = token_pieces(tokens[mask].tolist(), decode)
        out[mask] = sentence_ids_from_pieces(
            pieces, pause_chars=pause_chars, keep_number_separators=keep_number_separators
        )
    return out


def batch_sentence_ids(
    tokens: np.ndarray,
    response_mask: np.ndarray,
    decode: Decode,
    **kwargs,
) -> np.ndarray:
    """Sentence ids int32 [N, T] for a batch of rows; see `response_sentence_ids`."""
    tokens, mask = np.asarray(tokens), np.asarray(response_mask)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(
            f"tokens and response_mask must be [N, T] each, got {tokens.shape} and {mask.shape}"
        )
    rows = [
        response_sentence_ids(row, row_mask, decode, **kwargs)
        for row, row_mask in zip(tokens, mask, strict=True)
    ]
    return np.stack(rows) if rows else np.zeros(tokens.shape, dtype=np.int32)
