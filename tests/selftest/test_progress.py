"""Progress on long work: done / total with the time left, live on a terminal, plain lines in CI logs."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from gemma2_regress.builds.runner import _wait
from gemma2_regress.progress import PROGRESS_ENV, Progress, duration, estimate_left, read_run_progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_estimate_and_duration() -> None:
    assert duration(42) == "42 s" and duration(185) == "3 min 05 s" and duration(3720) == "1 h 02 min"
    assert estimate_left(0, 4, 10.0) == "time left unknown until the first finishes"
    assert estimate_left(1, 4, 60.0) == "about 3 min 00 s left"
    assert estimate_left(4, 4, 60.0) == "done"


def test_plain_lines_are_throttled_and_the_last_always_shows() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("killmatrix cpu", 3, stream=out, live=False, every_s=30.0, clock=clock)
    clock.t = 10.0
    p.update(1)  # first line: shown
    clock.t = 20.0
    p.update(2)  # 10 s later: held back
    clock.t = 25.0
    p.update(3, "last")  # the last: shown whatever the time
    lines = out.getvalue().splitlines()
    assert lines == [
        "[killmatrix cpu] 1/3 in 10 s, about 20 s left",
        "[killmatrix cpu] 3/3 in 25 s, done - last",
    ]


def test_live_line_is_rewritten_and_cleared_before_other_output() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("step 1 2026.10.5: tests", 10, stream=out, live=True, clock=clock)
    clock.t = 5.0
    p.update(5, "0 failed so far")
    p.update(6)
    p.line("[step 1] 2026.10.5: BAD")
    text = out.getvalue()
    assert text.count("\r[step 1 2026.10.5: tests] ") == 2 and "\n" not in text.split("[step 1] ")[0]
    assert text.endswith("\r[step 1] 2026.10.5: BAD\n")


def test_a_pytest_run_keeps_its_progress(pytester: pytest.Pytester, monkeypatch) -> None:
    """The suite's report plugin writes tests done / total / failed while the run goes."""
    pytester.makeconftest("pytest_plugins = ['gemma2_regress.plugins.report']")
    pytester.makepyfile(test_demo="def test_a(): pass\ndef test_b(): assert False\ndef test_c(): pass\n")
    path = pytester.path / "progress.json"
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    monkeypatch.setenv("GEMMA2_REGRESS_REPORT", str(pytester.path / "summary.json"))
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist").assert_outcomes(
        passed=2, failed=1
    )
    state = read_run_progress(path)
    assert state is not None and (state["total"], state["done"], state["failed"]) == (3, 3, 1)


def test_runner_passes_progress_on_as_it_changes(tmp_path) -> None:
    path = tmp_path / "progress.json"
    child = (
        "import json, pathlib, time, sys\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "for done in range(3):\n"
        "    p.write_text(json.dumps({'total': 2, 'done': done, 'failed': 0, 'elapsed_s': done}))\n"
        "    time.sleep(0.4)\n"
    )
    seen: list[dict] = []
    code = _wait(
        subprocess.Popen([sys.executable, "-c", child, str(path)]), 30, path, seen.append, poll_s=0.1
    )
    assert (
        code == 0 and [s["done"] for s in seen] == sorted({s["done"] for s in seen}) and seen[-1]["done"] >= 1
    )
    assert read_run_progress(tmp_path / "absent.json") is None
    (tmp_path / "half.json").write_text('{"total": 2')
    assert read_run_progress(tmp_path / "half.json") is None
    json.loads(path.read_text())  # the child's last state is whole


def test_runner_kills_a_run_past_its_limit(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    with pytest.raises(subprocess.TimeoutExpired):
        _wait(proc, 0.5, None, None, poll_s=0.1)
    assert proc.poll() is not None
