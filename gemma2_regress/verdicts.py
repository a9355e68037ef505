"""Verdicts: what one run of a target on one case came to, in a form bisect and reports can match.

``ok`` | ``mismatch`` | ``nan`` | ``crash:<ExceptionType>@<file>:<function>`` (the innermost
frame inside Unsloth or transformers, else the innermost frame at all).
"""

from __future__ import annotations

import traceback

INTERESTING = ("unsloth", "transformers", "torch/_dynamo", "torch/_inductor")


def crash_signature(exc: BaseException) -> str:
    """``crash:TypeError@flex_attention.py:slow_attention_softcapping`` for an exception."""
    frames = traceback.extract_tb(exc.__traceback__)
    pick = None
    for fr in frames:
        if any(part in fr.filename.replace("\\", "/") for part in INTERESTING):
            pick = fr
    if pick is None and frames:
        pick = frames[-1]
    where = f"@{pick.filename.rsplit('/', 1)[-1]}:{pick.name}" if pick else ""
    return f"crash:{type(exc).__name__}{where}"


def matches(verdict: str, wanted: str) -> bool:
    """Does ``verdict`` match the user's ``wanted`` pattern? A prefix match: ``crash`` matches any
    crash, ``crash:TypeError`` any TypeError, ``mismatch`` only mismatches, ``bad`` anything not ok."""
    if wanted == "bad":
        return verdict != "ok"
    return verdict.startswith(wanted)
