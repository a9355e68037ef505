"""conftest.py of the self-tests' fake projects (copied there): a stand-in for the suite's verdict hook.

Like the hook the suite's own runs load, it records each test's outcome and, from the live exception,
each distinct failure's verdict, message and Hypothesis counterexample, and writes them to the
summary JSON at ``GEMMA2_REGRESS_REPORT`` in the schema ``gemma2_regress.builds.runner`` reads.
Self-contained (standard library and pytest only): the fake projects' interpreter may import
another copy of gemma2_regress than the one under test.
"""

from __future__ import annotations

import json
import os
import re
import traceback

import pytest

TESTS: dict[str, dict] = {}
INTERESTING = ("unsloth", "transformers")
EXAMPLE = ("Falsifying example", "Failing test case")


def _verdict(exc: BaseException) -> str:
    if isinstance(exc, AssertionError):
        return "nan" if "nan: err(target)" in str(exc) else "mismatch"
    frames = traceback.extract_tb(exc.__traceback__)
    picked = [f for f in frames if any(p in f.filename for p in INTERESTING)] or frames
    where = f"@{os.path.basename(picked[-1].filename)}:{picked[-1].name}" if picked else ""
    return f"crash:{type(exc).__name__}{where}"


def _examples(exc: BaseException) -> tuple[str | None, str | None]:
    """(one line, block) from Hypothesis's notes on the exception: the call and any ``Draw n:`` lines."""
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    start = next((i for i, n in enumerate(notes) if n.startswith(EXAMPLE)), None)
    if start is None:
        return None, None
    block = [notes[start]]
    for note in notes[start + 1 :]:
        if not note.startswith("Draw "):
            break
        block.append(note)
    call = re.sub(r"\s+", " ", block[0].split(":", 1)[1]).strip().replace("( ", "(").replace(" )", ")")
    return call, "\n".join(block)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    rep = (yield).get_result()
    entry = TESTS.setdefault(item.nodeid, {"outcome": "passed", "duration_s": 0.0, "verdicts": []})
    entry["duration_s"] = round(entry["duration_s"] + rep.duration, 3)
    if hasattr(rep, "wasxfail"):
        entry["outcome"] = "xfailed" if rep.skipped else "xpassed"
    elif rep.failed:
        entry["outcome"] = "failed" if rep.when == "call" else "error"
        exc = call.excinfo.value if call.excinfo is not None else None
        parts = list(getattr(exc, "exceptions", None) or [exc]) if exc is not None else []
        for part in parts:
            example, block = _examples(part)
            message = f"{type(part).__name__}: {str(part).splitlines()[0] if str(part) else ''}"
            entry["verdicts"].append(
                {"verdict": _verdict(part), "message": message, "example": example, "example_block": block}
            )
    elif rep.skipped:
        entry["outcome"] = "skipped"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("GEMMA2_REGRESS_REPORT")
    if path and TESTS:
        with open(path + ".tmp", "w") as f:
            json.dump({"exit_status": int(exitstatus), "tests": TESTS}, f)
        os.replace(path + ".tmp", path)
