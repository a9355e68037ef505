"""gemma2_regress.plugins.worker_exit: an xdist worker ends before Python's finalization (its other exit
handlers do not run) once its results are in; a run without xdist, or one that coverage.py measures, ends
as usual."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from gemma2_regress.plugins import worker_exit

ROOT = Path(__file__).resolve().parents[2]

TESTS = """
import atexit
import os


def _mark():  # an exit handler registered at import, as torch's and Triton's are
    with open(os.environ["EXIT_MARK"], "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")


atexit.register(_mark)


def test_one():
    assert True


def test_two():
    assert True
"""


@pytest.mark.parametrize("xdist", [True, False], ids=["xdist-worker", "no-xdist"])
def test_a_worker_skips_finalization(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, xdist: bool
) -> None:
    pytester.makepyfile(test_inner_exit=TESTS)
    mark = pytester.path / "exit-mark.txt"
    monkeypatch.setenv("EXIT_MARK", str(mark))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # this run's own, when it runs under xdist
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-p", "no:cacheprovider", "-p", "gemma2_regress.plugins.worker_exit"]
    args += ["-n", "1"] if xdist else ["-p", "no:xdist"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2)  # every result reached the controller
    lines = mark.read_text().split() if mark.exists() else []
    # a lone pytest runs the handler as always; under xdist only the worker imports the tests, and there
    # it never ran (without the plugin this reads ["gw0"])
    assert lines == ([] if xdist else ["main"])


def test_coverage_keeps_its_exit_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(Coverage=types.SimpleNamespace(current=lambda: None))
    monkeypatch.setitem(sys.modules, "coverage", fake)
    assert not worker_exit._coverage_running()
    fake.Coverage.current = lambda: object()  # a measurement is running in this process
    assert worker_exit._coverage_running()
