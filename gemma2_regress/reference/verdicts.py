"""Verdicts: what one run of a target on one case came to, in a form bisect and reports can match.

``ok`` | ``mismatch`` | ``nan`` | ``crash:<ExceptionType>@<file>:<function>`` (the innermost
frame inside Unsloth or transformers, else the innermost frame at all).
"""

from __future__ import annotations

import traceback

INTERESTING = ("unsloth", "transformers", "torch/_dynamo", "torch/_inductor")


def signature(exc_type: str, frames: list[tuple[str, str]]) -> str:
    """``crash:<exc_type>@<file>:<function>`` from ``(filename, function)`` frames, outermost first:
    the innermost frame inside Unsloth/transformers/dynamo, else the innermost frame at all."""
    pick = None
    for filename, func in frames:
        if any(part in filename.replace("\\", "/") for part in INTERESTING):
            pick = (filename, func)
    if pick is None and frames:
        pick = frames[-1]
    where = f"@{pick[0].rsplit('/', 1)[-1]}:{pick[1]}" if pick else ""
    return f"crash:{exc_type}{where}"


def crash_signature(exc: BaseException) -> str:
    """``crash:TypeError@flex_attention.py:slow_attention_softcapping`` for an exception."""
    frames = [(fr.filename, fr.name) for fr in traceback.extract_tb(exc.__traceback__)]
    return signature(type(exc).__name__, frames)


def matches(verdict: str, wanted: str) -> bool:
    """Does ``verdict`` match the user's ``wanted`` pattern? A prefix match: ``crash`` matches any
    crash, ``crash:TypeError`` any TypeError, ``mismatch`` only mismatches, ``bad`` anything not ok."""
    if wanted == "bad":
        return verdict != "ok"
    return verdict.startswith(wanted)
