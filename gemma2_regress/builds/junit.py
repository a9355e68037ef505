"""A pytest JUnit XML file read back into per-test verdicts: the one reader the kill matrix, the
bisect and the gate share.

A failed test's record holds pytest's ``message`` and the traceback ``text``. It may hold several
distinct failures: Hypothesis reports them as one ``ExceptionGroup`` whose parts are printed
between ``+---------------- n ----------------`` rules. Each failure gets a verdict
(``gemma2_regress.reference.verdicts``):

- ``nan`` / ``mismatch``  an ``AssertionError``: a property's comparison failed; its report has
  ``<kind>: err(target)=...`` lines (model properties put several on one line,
  ``logits: ok: ...; loss: mismatch: ...``; any ``nan`` wins over ``mismatch``). One with no
  comparison line (a property check such as the window probe's "no change") is a ``mismatch`` too.
- ``crash:<Type>@<file>:<function>``  any other exception, at the innermost frame inside Unsloth,
  transformers or torch's compiler. Frames are read from both traceback styles pytest prints
  (``--tb=native``: ``File "f.py", line 3, in g``; the default: ``f.py:3: in g``).
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from gemma2_regress.reference import verdicts

_KIND = re.compile(r"\b(mismatch|nan): err\(target\)")
_FRAME = re.compile(
    r'File "(?P<f1>[^"]+)", line \d+, in (?P<n1>[\w<>.]+)|^(?P<f2>[^\s:|][^:]*\.py):\d+: in (?P<n2>[\w<>.]+)\s*$',
    re.M,
)
_EXC = re.compile(
    r"^(?:E\s+)?(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|ExceptionGroup|Exit|Failure|Interrupt|Unavailable|Warning))\b"
)
_GROUP_PART = re.compile(r"^\s*\+?-?\+?-{4,} \d+ -{4,}\s*$", re.M)
_EXAMPLE = re.compile(r"^(?:Falsifying example|Failing test case): ", re.M)
_DRAW = re.compile(r"^Draw \d+(?: \(([^)]*)\))?: ", re.M)


@dataclasses.dataclass
class Failure:
    """One distinct failure of a test."""

    verdict: str
    message: str
    counterexample: str | None


@dataclasses.dataclass
class TestResult:
    """One test case of the JUnit file."""

    nodeid: str  # "tests.kernel.test_slow_kernel::test_small_windows[...]" (JUnit classname::name)
    module: str  # "tests/kernel/test_slow_kernel.py"
    name: str
    outcome: str  # passed | failed | skipped
    message: str = ""
    failures: list[Failure] = dataclasses.field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``ok``, ``skipped`` or the first failure's verdict."""
        if self.outcome == "failed":
            return self.failures[0].verdict
        return "skipped" if self.outcome == "skipped" else "ok"

    @property
    def verdicts(self) -> list[str]:
        """Every distinct failure's verdict (``[verdict]`` when it did not fail)."""
        return [f.verdict for f in self.failures] or [self.verdict]


def _exception_type(message: str, text: str) -> str:
    m = _EXC.match(message.strip())
    if m is None:  # pytest's message may be only the text; take the last "E   Type: ..." line
        errs = [ln for ln in text.splitlines() if ln.startswith("E ")]
        m = _EXC.match(errs[-1][1:].strip()) if errs else None
    return (m.group("type") if m else "Error").rsplit(".", 1)[-1]


def verdict_of(message: str, text: str) -> str:
    """The verdict of one failure from its ``message`` and traceback ``text`` (see the module doc)."""
    exc = _exception_type(message, text)
    if exc == "AssertionError":
        # Only here: pytest's default traceback also prints source lines, which may quote such text.
        kinds = set(_KIND.findall(message) + _KIND.findall(text))
        return "nan" if "nan" in kinds else "mismatch"
    frames = [(m.group("f1") or m.group("f2"), m.group("n1") or m.group("n2")) for m in _FRAME.finditer(text)]
    return verdicts.signature(exc, frames)


def _balanced(lines: list[str]) -> str:
    """Join lines up to where the parentheses opened on the first line close, as one line."""
    out, depth = [], 0
    for line in lines:
        out.append(line.strip())
        depth += line.count("(") - line.count(")")
        if depth <= 0:
            break
    return re.sub(r"\s+", " ", " ".join(out)).replace("( ", "(").replace(" )", ")")


def counterexample(text: str) -> str | None:
    """Hypothesis's shrunk counterexample (``Falsifying example:``/``Failing test case:``), one line.

    Values drawn interactively (``st.data()``) are printed by Hypothesis as ``Draw 1 (case): Case(...)``
    after the call; they replace ``data=data(...)`` in the result.
    """
    text = re.sub(r"^E {1,7}", "", text, flags=re.M)  # pytest's default style prefixes "E   "
    matches = list(_EXAMPLE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    call = _balanced(rest.splitlines())
    draws = [
        f"{m.group(1) or 'draw'}={_balanced(rest[m.end() :].splitlines())}" for m in _DRAW.finditer(rest)
    ]
    if draws:
        call = call.replace("data=data(...)", ", ".join(draws))
    return call


def failures_in(message: str, text: str) -> list[Failure]:
    """The distinct failures in one failed test's record (several when Hypothesis found several)."""
    grouped = _exception_type(message, text) == "ExceptionGroup" or "Exception Group Traceback" in text
    if not grouped:
        return [Failure(verdict_of(message, text), message[:500], counterexample(text))]
    out = []
    for part in _GROUP_PART.split(text)[1:]:
        body = "\n".join(re.sub(r"^\s*\| ?", "", line) for line in part.splitlines())
        exc_line = next((ln for ln in body.splitlines() if _EXC.match(ln) and ":" in ln), "")
        if exc_line:
            out.append(Failure(verdict_of(exc_line, body), exc_line[:500], counterexample(body)))
    return out or [Failure("crash:ExceptionGroup", message[:500], None)]


def read(path: Path) -> list[TestResult]:
    """Every test case of a JUnit XML file (empty when it is missing or unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        r = TestResult(
            nodeid=f"{classname}::{name}",
            module=classname.replace(".", "/") + ".py" if classname else "",
            name=name,
            outcome="passed",
        )
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            r.outcome, r.message = "failed", bad.get("message", "") or ""
            r.failures = failures_in(r.message, bad.text or "")
        elif (skip := case.find("skipped")) is not None:
            r.outcome, r.message = "skipped", skip.get("message", "") or ""
        r.message = r.message[:500]
        out.append(r)
    return out
