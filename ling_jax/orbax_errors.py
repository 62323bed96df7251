"""Orbax / tensorstore failures reduced to one line: the innermost message, spec dumps cut off."""

from __future__ import annotations

_NOISE = (" [tensorstore_spec=", "See full TensorStore details", "[source locations=")


def error_cause(e: BaseException, limit: int = 300) -> str:
    """One line for an orbax / tensorstore error: its innermost message without spec dumps."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = ""
    for err in reversed(chain):  # the innermost message names the cause
        msg = str(err)
        for marker in _NOISE:
            msg = msg.split(marker)[0]
        msg = " ".join(msg.split())
        if msg:
            text = msg if isinstance(err, ValueError | OSError) else f"{type(err).__name__}: {msg}"
            break
    text = text or type(chain[0]).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
