"""An xdist worker ends without Python's finalization, once everything it had to say has been said.

A pytest plugin (registered from conftest with ``pytest_plugins``). In an xdist worker only, at the end
of its ``pytest_unconfigure`` it registers an exit handler; Python runs the handlers registered last
first, so this one runs before every other handler, once the worker's session is over and its results
have gone to the controller. It flushes stdout and stderr and ends the process with ``os._exit(0)``.
What that skips: the other exit handlers, the teardown of every module and the interpreter's last full
garbage collection. Where coverage.py measures this process (``coverage.Coverage.current()``), its handler
still has data to save, and the worker ends as usual. A run without xdist is never touched: a lone pytest
finalizes as always, and its exit status is pytest's.

Why: xdist's controller waits for each worker process to end before it finishes the session, and
finalizing a worker that holds torch, transformers and Unsloth (about a million objects the collector
tracks) took seconds: the controller's end of a 6-worker H200 run, from its last test report, took 5.5 to
5.9 s with it and 2.7 to 2.9 s without (docs/perf.md). Nothing in the suite writes at exit: the reports
and records are written during the session (``plugins.report``, ``plugins.costs``, ``plugins.gpu_budget``,
``plugins.compile_artifacts``).
"""

from __future__ import annotations

import atexit
import os
import sys

import pytest


def _coverage_running() -> bool:
    """coverage.py measures this process: its exit handler must still save the data."""
    coverage = sys.modules.get("coverage")
    current = getattr(getattr(coverage, "Coverage", None), "current", None)
    return bool(current and current() is not None)


def _end_now() -> None:
    if _coverage_running():  # asked at exit: coverage.py may have started after the handler was registered
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe that is gone: nothing more can be said
            pass
    os._exit(0)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        atexit.register(_end_now)
