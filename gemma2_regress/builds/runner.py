"""What "bad" means for a candidate: a pytest selection run in its environment, read per test.

A ``Selection`` is pytest arguments (node ids, ``-k``, ``-m``...) and optionally a verdict pattern
(``gemma2_regress.reference.verdicts.matches``: ``crash``, ``crash:TypeError``, ``mismatch``, ``nan``,
``bad``). ``run`` starts pytest with the candidate's interpreter, writes JUnit XML and the suite's
summary JSON (``GEMMA2_REGRESS_REPORT``) into a step directory, and classifies the candidate:

- ``good``  every selected test passed, or the failures do not match the pattern;
- ``bad``   a test failed with a verdict that matches the pattern (any failure without a pattern);
- ``skip``  the candidate cannot be judged: it does not import (``crash:UnslothUnavailable``), the
            selection did not collect, or the run timed out. Never "bad".

Per-test verdicts come from the JUnit XML (``gemma2_regress.builds.junit``): ``ok``; ``mismatch`` / ``nan``
when the property's assertion says so; otherwise ``crash:<Type>@<file>:<function>`` with the
innermost frame inside Unsloth, transformers or torch's compiler. A test in which Hypothesis found
several distinct failures is bad when any of them matches the pattern.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path

from gemma2_regress.builds import junit
from gemma2_regress.builds.envs import Env
from gemma2_regress.reference import verdicts

UNUSABLE = ("crash:UnslothUnavailable",)  # the adapter's "this build does not import here"
_END = re.compile(
    r"(Explanation:|You can reproduce|Highest target score|Trying example|_ _|={3,}|\S+\.py:\d+)"
)


@dataclasses.dataclass
class Selection:
    """pytest arguments choosing the tests, and the verdict pattern that counts as bad."""

    pytest_args: list[str]
    signature: str | None = None
    timeout_s: float = 3600.0

    def describe(self) -> str:
        sig = f" [bad = {self.signature}]" if self.signature else ""
        return "pytest " + " ".join(self.pytest_args) + sig


@dataclasses.dataclass
class Outcome:
    """One test's verdict in one candidate."""

    nodeid: str
    verdict: str  # ok | skipped | mismatch | nan | crash:... (a failed test's first distinct failure)
    message: str = ""
    all_verdicts: tuple[str, ...] = ()  # every distinct failure's (Hypothesis may find several)

    def matching(self, wanted: str) -> str | None:
        """The first of this test's verdicts that matches the pattern (``verdicts.matches``), or None."""
        return next((v for v in self.all_verdicts or (self.verdict,) if verdicts.matches(v, wanted)), None)


@dataclasses.dataclass
class RunResult:
    status: str  # good | bad | skip
    reason: str
    signature: str  # the verdict that decided (first matching failure), or "ok"
    tests: list[Outcome]
    test_s: float
    exit_code: int
    falsifying: str | None = None
    log: str = ""
    records: dict[str, int] = dataclasses.field(default_factory=dict)


def read_junit(path: Path) -> list[Outcome]:
    """Per-test outcomes from a JUnit XML file (``gemma2_regress.builds.junit``; empty if it is missing)."""
    return [
        Outcome(t.nodeid, t.verdict, t.message.splitlines()[0][:300] if t.message else "", tuple(t.verdicts))
        for t in junit.read(path)
    ]


def falsifying_example(log: str) -> str | None:
    """The first Hypothesis counterexample block in a pytest log ("Falsifying example: ..." or, in
    newer Hypothesis, "Failing test case: ..."): the call and any ``Draw n: ...`` values of
    ``st.data()``, up to Hypothesis's explanation / reproduction hints."""
    lines = [re.sub(r"^E\s?", "", ln).rstrip() for ln in log.splitlines()]
    for i, ln in enumerate(lines):
        m = re.search(r"(Falsifying example|Failing test case):", ln)
        if m is None:
            continue
        indent = len(ln) - len(ln.lstrip())
        block = [ln[m.start() :].strip()]
        for nxt in lines[i + 1 : i + 120]:
            body = nxt[indent:] if nxt[:indent].strip() == "" else nxt.strip()
            if not body.strip() or _END.match(body) or (block[-1] == ")" and not body.startswith("Draw ")):
                break
            block.append(body)
        return "\n".join(block)
    return None


def _record_counts(path: Path) -> dict[str, int]:
    try:
        records = json.loads(path.read_text()).get("records", [])
    except (OSError, ValueError):
        return {}
    return dict(collections.Counter(r.get("verdict", "?") for r in records))


def classify(sel: Selection, exit_code: int, tests: list[Outcome]) -> tuple[str, str, str]:
    """(status, reason, deciding signature) from pytest's exit code and the per-test verdicts."""
    failed = [t for t in tests if t.verdict not in ("ok", "skipped")]
    if failed and all(any(t.verdict.startswith(u) for u in UNUSABLE) for t in failed):
        return "skip", f"does not import: {failed[0].message or failed[0].verdict}", failed[0].verdict
    if exit_code == 5 or (exit_code == 0 and not tests):
        return "skip", "the selection collected no tests here", "none"
    if exit_code in (2, 3) and not failed:
        return (
            "skip",
            f"pytest could not run the selection (exit {exit_code}: collection or internal error)",
            "error",
        )
    if exit_code == 4:
        return "skip", "pytest rejected the arguments (exit 4); check the selection", "error"
    if not failed:
        return (
            ("good", "all selected tests passed", "ok")
            if exit_code == 0
            else ("skip", f"pytest exit {exit_code} without a failing test", "error")
        )
    wanted = sel.signature or "bad"
    hits = [(t, sig) for t in failed if (sig := t.matching(wanted)) is not None]
    if hits:
        first, sig = hits[0]
        return "bad", f"{len(hits)}/{len(tests)} tests {sig}: {first.nodeid}", sig
    others = sorted({t.verdict for t in failed})
    return "good", f"no failure matches {wanted!r} (other failures: {', '.join(others)})", "ok"


def run(
    env: Env,
    sel: Selection,
    step_dir: Path,
    *,
    cwd: Path,
    extra_env: dict[str, str] | None = None,
) -> RunResult:
    """Run the selection in ``env`` from ``cwd``; reports and the log go to ``step_dir``."""
    step_dir.mkdir(parents=True, exist_ok=True)
    junit, summary, logf = step_dir / "junit.xml", step_dir / "summary.json", step_dir / "pytest.log"
    for p in (junit, summary):
        p.unlink(missing_ok=True)
    own = {
        "GEMMA2_REGRESS_REPORT": str(summary),
        "GEMMA2_REGRESS_COSTS": str(step_dir / "costs.json"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if "UNSLOTH_COMPILE_LOCATION" not in os.environ:  # no compiled code shared between builds or left in cwd
        own["UNSLOTH_COMPILE_LOCATION"] = str(step_dir.resolve() / "unsloth_compiled_cache")
    environ = env.environ(
        {**own, **(extra_env or {})},
        base={**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])},
    )
    argv = [
        env.python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        f"--junitxml={junit}",
        *sel.pytest_args,
    ]
    t0 = time.time()
    try:
        with open(logf, "w") as log:
            code = subprocess.run(
                argv, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT, timeout=sel.timeout_s
            ).returncode
    except subprocess.TimeoutExpired:
        return RunResult(
            "skip",
            f"timed out after {sel.timeout_s:.0f} s",
            "timeout",
            [],
            time.time() - t0,
            -1,
            log=str(logf),
        )
    spent = time.time() - t0
    tests = read_junit(junit)
    status, reason, sig = classify(sel, code, tests)
    text = logf.read_text(errors="replace")
    if status == "skip" and not tests:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:]
        reason += f" ({tail[0][:200]})" if tail else ""
    return RunResult(
        status,
        reason,
        sig,
        tests,
        spent,
        code,
        falsifying_example(text) if status == "bad" else None,
        str(logf),
        _record_counts(summary),
    )
