"""The run's report: per-example records, per-test verdicts, the end-of-run table and the summary JSON.

A pytest plugin (registered from conftest with ``pytest_plugins``). Its state lives in one ``Run``
per pytest session, on ``config.stash[RUN]`` (``run_of``), created in ``pytest_configure``.

Records. A property function calls ``record(property, target, verdict, ratio, case, **extra)`` once
per Hypothesis example. The controlling pytest process makes a spool folder and names it in the
environment (``SPOOL_ENV``), which its xdist workers inherit; every process appends its records there,
one JSON line each (``spool``), so a run stopped by a time limit still reports every example that
finished, also those of workers killed before handing back. Outside a run (no spool folder) ``record``
does nothing. The cost plugin spools its per-test records the same way, in the ``costs`` subfolder.
The summary keeps the worst ratio per (property, target): the end-of-run table.

Verdicts. Where a test runs (the xdist worker, or pytest itself), ``pytest_runtest_makereport``
computes a failed report's verdicts from the live exception (``reference.verdicts.failures``): one per
distinct failure, ``mismatch`` | ``nan`` | ``crash:<Type>@<file>:<function>``, with the exception's
first line and Hypothesis's failing example. A failure in setup or teardown is a crash whatever the
exception. A failed report without an exception (a strict xfail that passed, ``[XPASS(strict)]``; a
test whose xdist worker crashed) is ``crash:Error``, with pytest's first line as the message. The
verdicts travel on the report (attribute ``VERDICTS_ATTR``, which xdist serialises with it), so the
controller has every finished test's verdicts even when a worker dies.

The summary JSON, written at the end of the session (also an interrupted one: Ctrl-C, SIGINT) to
``report_path("summary.json", "GEMMA2_REGRESS_REPORT")`` (``reports/<tier>/summary.json``)::

    {
      "versions": {<package>: <version>, ...},     # gemma2_regress.versions.versions()
      "exit_status": int,                          # pytest's (1 where --require-gpu's rule tripped)
      "wall_s": float,                             # configure to the end of the session
      "narrowed": [str, ...],                      # what ran less than the whole tier (suite.narrowed)
      "tests": {
        <pytest node id>: {                        # "tests/kernel/test_slow_kernel.py::test_x[cpu]"
          "outcome": "passed" | "failed" | "error" | "skipped" | "xfailed" | "xpassed",
          "duration_s": float,                     # the call's seconds, plus a failed setup's/teardown's
          "verdicts": [                            # [] unless outcome is "failed" or "error"
            {
              "verdict": str,                      # mismatch | nan | crash:<Type>@<file>:<function>
              "message": str,                      # the exception's first line ("Type: ..."), <= 300 chars
              "example": str | null,               # Hypothesis's failing example on one line, draws inlined
              "example_block": str | null          # the same as Hypothesis printed it
            }, ...                                 # one per distinct failure, in Hypothesis's order
          ]
        }, ...
      },
      "properties": [<worst_by_property row>, ...],
      "records": [<record>, ...]
    }

"error" is a failure outside the test's call (setup or teardown; a crashed xdist worker); a test
that failed and then errored in teardown is "error", with both phases' verdicts. Nothing is written
by a run that ran no test and recorded nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from gemma2_regress import versions
from gemma2_regress.atomic import json_default, write_json_atomic
from gemma2_regress.plugins.summary import table_lines, worst_by_property
from gemma2_regress.progress import PROGRESS_ENV
from gemma2_regress.reference import verdicts
from gemma2_regress.suite import TIER_ENV, narrowed, report_path  # stdlib only: nox reads it

SPOOL_ENV = "GEMMA2_REGRESS_SPOOL"
VERDICTS_ATTR = "gemma2_verdicts"  # on a failed TestReport: its verdicts, as summary-JSON dicts
_PLUGIN = "gemma2-report"


@dataclasses.dataclass
class Run:
    """One pytest session's report state (``config.stash[RUN]``)."""

    controller: bool  # the process that reports: pytest itself, not an xdist worker
    started: float = dataclasses.field(default_factory=time.time)
    tests: dict[str, dict] = dataclasses.field(default_factory=dict)  # node id -> summary entry
    spool: Path | None = None  # the controller's spool folder
    spool_env_before: str | None = None  # SPOOL_ENV as it was before this session set it
    rows: list[dict] = dataclasses.field(default_factory=list)  # worst_by_property, at the end
    summary_path: str | None = None  # where the summary JSON went, once written
    total: int = 0  # tests to run (progress), once collected
    done: int = 0  # tests finished (progress)


RUN = pytest.StashKey[Run]()


def run_of(config: pytest.Config) -> Run | None:
    """This session's ``Run`` (None where the plugin is not loaded)."""
    return config.stash.get(RUN, None)


def spool(rec: dict, stream: str = "") -> bool:
    """Append ``rec`` as one JSON line to this process's file in the run's spool folder (``stream``: a
    subfolder of its own, e.g. the cost plugin's ``costs``; "" the records); False outside a run
    (``SPOOL_ENV`` unset or not a folder), where nothing is kept."""
    folder = os.environ.get(SPOOL_ENV)
    if not folder or not Path(folder).is_dir():
        return False
    where = Path(folder) / stream
    if stream:  # the records' own folder exists; a stream's is made by its first line
        where.mkdir(exist_ok=True)
    name = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}.jsonl"
    with open(where / name, "a") as f:
        f.write(json.dumps(rec, default=json_default) + "\n")
    return True


def record(prop: str, target: str, verdict: str, ratio: float, case: str, **extra: object) -> None:
    """Spool one measurement (cheap; called once per Hypothesis example), with the running test's node
    id (``test``) when pytest runs it. Outside a run nothing is kept."""
    rec = {"property": prop, "target": target, "verdict": verdict, "ratio": ratio, "case": case, **extra}
    current = os.environ.get("PYTEST_CURRENT_TEST")  # "tests/x.py::test_y[p] (call)"
    if current and "test" not in rec:
        rec["test"] = current.rsplit(" ", 1)[0]
    spool(rec)


def read_spool(folder: str | os.PathLike, stream: str = "") -> list[dict]:
    """Every line spooled to ``stream`` under ``folder``, file by file, each file in the order written; a
    line cut short by a kill is skipped."""
    out = []
    for path in sorted((Path(folder) / stream).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def report_verdicts(rep: Any, exc: BaseException | None) -> list[dict]:
    """The summary-JSON verdicts of one failed report (see the module docstring), from the exception
    that failed it (``None``: a failure pytest reported without one)."""
    if exc is None:
        text = str(getattr(rep, "longrepr", "") or "")  # not longreprtext: xdist heads that with the worker
        found = [verdicts.Failure(verdicts.signature("Error", []), verdicts.first_line(text))]
    else:
        found = verdicts.failures(exc, crash_only=rep.when != "call")
    return [dataclasses.asdict(f) for f in found]


def note_test(tests: dict[str, dict], rep: Any) -> None:
    """Keep a test's outcome in ``tests`` from its pytest reports: passed, failed, error (setup/teardown),
    skipped, xfailed or xpassed, with the call's duration (plus a failed setup's or teardown's) and the
    failed reports' verdicts."""
    nodeid, when = rep.nodeid, rep.when
    if hasattr(rep, "wasxfail"):
        outcome = "xfailed" if rep.skipped else "xpassed"
    elif rep.failed:
        outcome = "failed" if when == "call" else "error"
    elif rep.skipped:
        outcome = "skipped"
    elif when == "call":
        outcome = "passed"
    else:
        return  # a passing setup or teardown says nothing new
    entry = tests.setdefault(nodeid, {"outcome": outcome, "duration_s": 0.0, "verdicts": []})
    if when == "call" or outcome in ("error", "failed"):
        entry["outcome"] = outcome
    entry["duration_s"] = round(entry["duration_s"] + float(rep.duration), 3)
    if rep.failed:
        found = getattr(rep, VERDICTS_ATTR, None)
        entry["verdicts"].extend(found if found is not None else report_verdicts(rep, None))


class _Plugin:
    """The hooks, bound to one session's ``Run``."""

    def __init__(self, run: Run) -> None:
        self.run = run

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: sees the report as xfail handling left it
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        rep = yield
        if rep.failed:
            exc = call.excinfo.value if call.excinfo is not None else None
            setattr(rep, VERDICTS_ATTR, report_verdicts(rep, exc))
        return rep

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:  # xdist forwards workers' reports
        if self.run.controller:
            note_test(self.run.tests, report)
            if report.when == "teardown":
                self.run.done += 1
                self._progress()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.run.controller and session.items:  # without xdist: the items to run
            self.run.total = len(session.items)
            self._progress()

    @pytest.hookimpl(optionalhook=True)  # xdist's controller collects nothing itself: each worker's ids
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.run.total = max(self.run.total, len(ids))
        self._progress()

    def _progress(self) -> None:
        """Keep ``{"total", "done", "failed", "elapsed_s"}`` in the file ``PROGRESS_ENV`` names, if any
        (``builds.runner`` shows it while a bisect step runs)."""
        path = os.environ.get(PROGRESS_ENV)
        if not path:
            return
        failed = sum(t["outcome"] in ("failed", "error") for t in self.run.tests.values())
        state = {
            "total": self.run.total,
            "done": self.run.done,
            "failed": failed,
            "elapsed_s": round(time.time() - self.run.started, 1),
        }
        try:
            write_json_atomic(path, state)
        except OSError:
            pass  # progress is a courtesy: a run never fails for it

    # A wrapper, written after every plain sessionfinish (require_gpu's rule sets the exit status in one),
    # and also when one of them is interrupted: xdist's shuts its workers down there, and a time bound's
    # SIGINT that landed in that wait once lost the summary of a run whose tests had all finished.
    # trylast: inside the terminal reporter's wrapper, which prints the summary (ours too) after it.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Any:
        try:
            result = yield
        except BaseException:
            self._write(session, pytest.ExitCode.INTERRUPTED)
            raise
        self._write(session, session.exitstatus)
        return result

    def _write(self, session: pytest.Session, status: int) -> None:
        run = self.run
        if not run.controller:
            return
        records = read_spool(run.spool) if run.spool else []
        run.rows = worst_by_property(records, run.tests, interrupted=status == pytest.ExitCode.INTERRUPTED)
        if not run.rows and not run.tests:
            return
        out = report_path("summary.json", "GEMMA2_REGRESS_REPORT")
        write_json_atomic(
            out,
            {
                "versions": versions.versions(),
                "exit_status": int(status),
                "wall_s": round(time.time() - run.started, 1),
                "narrowed": selection(session.config),
                "tests": run.tests,
                "properties": run.rows,
                "records": records,
            },
        )
        run.summary_path = out

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.run.rows:
            terminalreporter.section(
                "gemma2-regress: worst error ratio per property (1.0 = at the tolerance bound)"
            )
            for line in table_lines(self.run.rows):
                terminalreporter.write_line(line)
        if self.run.summary_path:
            terminalreporter.write_line(f"summary JSON: {self.run.summary_path}")


def selection(config: pytest.Config) -> list[str]:
    """What made this run less than its whole tier (``suite.narrowed``; the tier from ``GEMMA2_REGRESS_TIER``)."""
    return narrowed(
        config.args_source == pytest.Config.ArgsSource.ARGS,
        config.getoption("markexpr", "") or "",
        config.getoption("keyword", "") or "",
        config.getoption("deselect", None) or [],
        os.environ.get(TIER_ENV, ""),
    )


def pytest_configure(config: pytest.Config) -> None:
    run = Run(controller=not hasattr(config, "workerinput"))
    if run.controller:  # xdist workers, started after this, inherit the spool folder's name
        run.spool = Path(tempfile.mkdtemp(prefix="gemma2-records-"))
        run.spool_env_before = os.environ.get(SPOOL_ENV)
        os.environ[SPOOL_ENV] = str(run.spool)
    config.stash[RUN] = run
    config.pluginmanager.register(_Plugin(run), _PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = run_of(config)
    if run is None or run.spool is None:
        return
    shutil.rmtree(run.spool, ignore_errors=True)
    if os.environ.get(SPOOL_ENV) == str(run.spool):  # a pytest run inside a test hands the outer one back
        if run.spool_env_before is None:
            os.environ.pop(SPOOL_ENV, None)
        else:
            os.environ[SPOOL_ENV] = run.spool_env_before
