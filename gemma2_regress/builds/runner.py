"""The one pytest runner: a selection run in a build's environment, read back per test.

A ``Selection`` is pytest arguments (node ids, ``-k``, ``-m``, ``-x``, plugin options such as
``--mutant``...) and optionally a verdict pattern (``gemma2_regress.reference.verdicts.matches``:
``crash``, ``crash:TypeError``, ``mismatch``, ``nan``, ``bad``). ``run`` starts pytest with the
environment's interpreter (extra environment variables, one GPU via ``CUDA_VISIBLE_DEVICES``, a
time limit), has it write the suite's summary JSON (``GEMMA2_REGRESS_REPORT``), JUnit XML (for CI
systems, not read here) and the log into a step folder, and classifies the run:

- ``good``  every selected test passed, or the failures do not match the pattern;
- ``bad``   a test failed with a verdict that matches the pattern (any failure without a pattern);
- ``skip``  the run cannot be judged: the build does not import (``crash:UnslothUnavailable``), the
            selection did not collect, the run timed out, or it left no per-test verdicts
            (``unjudged``: no summary JSON, or a failed test without a recorded verdict when a
            pattern asks which failure it was). Never "bad", and never "good".

Per-test outcomes and verdicts are read from the summary JSON's ``tests``, where the suite's hook
recorded them from the live exception (``read_summary``)::

    "tests": {"tests/kernel/test_slow_kernel.py::test_x[a]": {
        "outcome": "passed|failed|error|skipped|xfailed|xpassed", "duration_s": 1.5,
        "verdicts": [{"verdict": "mismatch|nan|crash:<Type>@<file>:<function>", "message": "first line",
                      "example": "one-line counterexample or null", "example_block": "full block or null"}]}}

A test in which Hypothesis found several distinct failures has several verdicts and is bad when any
of them matches the pattern. A Hypothesis counterexample comes in the two renderings recorded
there: ``example`` (one line, for tables) and ``example_block`` (Hypothesis's own block, for the
issue text).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gemma2_regress.builds.envs import Env
from gemma2_regress.plugins import strict_xfail
from gemma2_regress.progress import PROGRESS_ENV, read_run_progress
from gemma2_regress.reference import verdicts

UNUSABLE = ("crash:UnslothUnavailable",)  # the adapter's "this build does not import here"
UNJUDGED = "unjudged"  # a failed test with no recorded verdict, or a run with no summary JSON
FAILED = ("failed", "error")  # pytest outcomes that are failures (a strict XPASS is "failed")
PASSED = ("passed", "xpassed")


@dataclasses.dataclass
class Selection:
    """pytest arguments choosing the tests, and the verdict pattern that counts as bad."""

    pytest_args: list[str]
    signature: str | None = None
    timeout_s: float = 3600.0
    # False: the recorded upstream bugs are set aside (no strict xfails), so the run says what the build
    # does. Bisect and gate compare builds, and a recorded bug is what they look for.
    known_issues: bool = True

    def describe(self) -> str:
        sig = f" [bad = {self.signature}]" if self.signature else ""
        return "pytest " + shlex.join(self.pytest_args) + sig


@dataclasses.dataclass(frozen=True)
class Failure:
    """One distinct failure of a test, as the suite's hook recorded it."""

    verdict: str  # mismatch | nan | crash:<Type>@<file>:<function>
    message: str = ""  # the exception message's first line
    example: str | None = None  # Hypothesis's counterexample on one line
    example_block: str | None = None  # the same as Hypothesis printed it ("Falsifying example: ...")


@dataclasses.dataclass
class Outcome:
    """One test in one run: pytest's outcome and, for a failure, each distinct failure's verdict."""

    nodeid: str  # pytest's: "tests/kernel/test_slow_kernel.py::test_small_windows[...]"
    outcome: str  # passed | failed | error | skipped | xfailed | xpassed
    failures: tuple[Failure, ...] = ()
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome in FAILED

    @property
    def plain(self) -> str:
        """passed, failed or skipped: an xpassed test counts as passed, an error (in setup or
        teardown) as failed, an xfailed one as skipped."""
        return "failed" if self.failed else "passed" if self.outcome in PASSED else "skipped"

    @property
    def module(self) -> str:
        """The test's file, ``tests/kernel/test_slow_kernel.py``."""
        return self.nodeid.split("::", 1)[0]

    @property
    def verdict(self) -> str:
        """``ok`` (passed, xpassed), ``skipped`` (skipped, xfailed), else the first failure's verdict
        (``unjudged`` when none was recorded)."""
        if not self.failed:
            return "ok" if self.outcome in PASSED else "skipped"
        return self.failures[0].verdict if self.failures else UNJUDGED

    @property
    def message(self) -> str:
        return self.failures[0].message if self.failures else ""

    def matching(self, wanted: str) -> Failure | None:
        """The first of this test's failures whose verdict matches the pattern (``verdicts.matches``);
        a failure without a recorded verdict matches only ``bad`` (any failure)."""
        if not self.failed:
            return None
        if not self.failures:
            return Failure(UNJUDGED) if wanted == "bad" else None
        return next((f for f in self.failures if verdicts.matches(f.verdict, wanted)), None)


@dataclasses.dataclass
class RunResult:
    status: str  # good | bad | skip
    reason: str
    signature: str  # the verdict that decided (first matching failure), or "ok"
    tests: list[Outcome]
    test_s: float
    exit_code: int  # pytest's; -1 when it was stopped at the time limit
    falsifying: str | None = None  # the deciding failure's counterexample block
    log: str = ""
    records: dict[str, int] = dataclasses.field(default_factory=dict)
    command: list[str] = dataclasses.field(default_factory=list)
    timed_out: bool = False


def load_summary(path: Path) -> dict:
    """A run's summary JSON (schema: the module doc) as read from ``path``; empty where the file is
    missing, unreadable or not a JSON object. The one reader of that file here."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def read_summary(path: Path) -> list[Outcome] | None:
    """Per-test outcomes from a run's summary JSON, in its order; None when the file is missing,
    unreadable or has no ``tests`` (the run cannot be judged)."""
    tests = load_summary(path).get("tests")
    if not isinstance(tests, dict):
        return None
    out = []
    for nodeid, t in tests.items():
        failures = tuple(
            Failure(
                str(v.get("verdict") or UNJUDGED),
                (v.get("message") or "").split("\n", 1)[0][:300],
                v.get("example"),
                v.get("example_block"),
            )
            for v in t.get("verdicts") or ()
        )
        out.append(Outcome(nodeid, str(t.get("outcome", "")), failures, float(t.get("duration_s") or 0.0)))
    return out


def _record_counts(path: Path) -> dict[str, int]:
    records = load_summary(path).get("records") or []
    return dict(collections.Counter(r.get("verdict", "?") for r in records if isinstance(r, dict)))


def classify(sel: Selection, exit_code: int, tests: list[Outcome] | None) -> tuple[str, str, str]:
    """(status, reason, deciding signature) from pytest's exit code and the per-test outcomes
    (``None``: the run left no summary JSON)."""
    failed = [t for t in tests or () if t.failed]
    if failed and all(any(t.verdict.startswith(u) for u in UNUSABLE) for t in failed):
        return "skip", f"does not import: {failed[0].message or failed[0].verdict}", failed[0].verdict
    if exit_code == 5 or (exit_code == 0 and tests == []):
        return "skip", "the selection collected no tests here", "none"
    if exit_code in (2, 3) and not failed:
        return (
            "skip",
            f"pytest could not run the selection (exit {exit_code}: collection or internal error)",
            "error",
        )
    if exit_code == 4:
        return "skip", "pytest rejected the arguments (exit 4); check the selection", "error"
    if tests is None:
        return (
            "skip",
            f"unjudged: pytest exit {exit_code} left no summary JSON with per-test verdicts",
            UNJUDGED,
        )
    if not failed:
        return (
            ("good", "all selected tests passed", "ok")
            if exit_code == 0
            else ("skip", f"pytest exit {exit_code} without a failing test", "error")
        )
    wanted = sel.signature or "bad"
    hits = [(t, f) for t in failed if (f := t.matching(wanted)) is not None]
    if hits:
        first, f = hits[0]
        return "bad", f"{len(hits)}/{len(tests)} tests {f.verdict}: {first.nodeid}", f.verdict
    unjudged = [t for t in failed if not t.failures]
    if unjudged:
        return (
            "skip",
            f"unjudged: {len(unjudged)} failed test(s) have no recorded verdict, "
            f"so whether they are {wanted!r} is unknown ({unjudged[0].nodeid})",
            UNJUDGED,
        )
    others = sorted({t.verdict for t in failed})
    return "good", f"no failure matches {wanted!r} (other failures: {', '.join(others)})", "ok"


def deciding_failure(sel: Selection, tests: list[Outcome]) -> Failure | None:
    """The failure a ``bad`` run is called bad for: the first one matching the pattern."""
    wanted = sel.signature or "bad"
    return next((f for t in tests if (f := t.matching(wanted)) is not None), None)


def _wait(
    proc: subprocess.Popen,
    timeout_s: float,
    progress_file: Path | None,
    on_progress: Callable[[dict], None] | None,
    poll_s: float = 2.0,
) -> int:
    """``proc``'s exit code; its progress passed on as it changes; killed and ``TimeoutExpired`` past
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(poll_s, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                proc.kill()
                proc.wait()
                raise
        if progress_file is not None and on_progress is not None:
            state = read_run_progress(progress_file)
            if state is not None and state != seen:
                seen = state
                on_progress(state)


def run(
    env: Env,
    sel: Selection,
    step_dir: Path,
    *,
    cwd: Path,
    extra_env: Mapping[str, str | None] | None = None,
    gpu: str | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> RunResult:
    """Run the selection in ``env`` from ``cwd`` (put first on PYTHONPATH); reports and the log go to
    ``step_dir``. ``extra_env`` is set in the test process (a value of None removes the variable);
    ``gpu`` pins the run to that CUDA device; ``on_progress`` is called with the run's progress
    (``progress.read_run_progress``: tests done / total, failed, elapsed) each time it changes. Never
    raises for a failing or hanging suite."""
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
    if gpu is not None:
        own["CUDA_VISIBLE_DEVICES"] = gpu
    if not sel.known_issues:
        own[strict_xfail.IGNORE_ENV] = "ignore"
    progress_file = step_dir / "progress.json"
    progress_file.unlink(missing_ok=True)
    if on_progress is not None:
        own[PROGRESS_ENV] = str(progress_file)
    extra = {**own, **(extra_env or {})}
    environ = env.environ(
        {k: v for k, v in extra.items() if v is not None},
        base={**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])},
    )
    for k in [k for k, v in extra.items() if v is None]:
        environ.pop(k, None)
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
            code = _wait(
                subprocess.Popen(argv, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT),
                sel.timeout_s,
                progress_file if on_progress is not None else None,
                on_progress,
            )
    except subprocess.TimeoutExpired:
        return RunResult(
            "skip",
            f"timed out after {sel.timeout_s:.0f} s",
            "timeout",
            [],
            time.time() - t0,
            -1,
            log=str(logf),
            command=argv,
            timed_out=True,
        )
    spent = time.time() - t0
    tests = read_summary(summary)
    status, reason, sig = classify(sel, code, tests)
    if status == "skip" and not tests:
        text = logf.read_text(errors="replace")
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:]
        reason += f" ({tail[0][:200]})" if tail else ""
    deciding = deciding_failure(sel, tests or []) if status == "bad" else None
    return RunResult(
        status,
        reason,
        sig,
        tests or [],
        spent,
        code,
        (deciding.example_block or deciding.example) if deciding else None,
        str(logf),
        _record_counts(summary),
        argv,
    )
