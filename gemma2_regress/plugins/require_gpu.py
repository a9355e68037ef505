"""``--require-gpu``: where a GPU is expected, a run without one fails instead of skipping (a pytest plugin).

Registered from conftest with ``pytest_plugins``. A GPU is required with ``--require-gpu`` or
``GEMMA2_REGRESS_REQUIRE_GPU=1`` (``gpu_check.required_by``); then

- the ``device`` fixture's ``cuda`` parameter fails where torch sees no CUDA device (``need_cuda``);
- a GPU run that executed no ``gpu``-marked test (all skipped, or none selected) ends with exit
  status 1 and one line saying so, with the first skip reason. A GPU run is the GPU tier
  (``GEMMA2_REGRESS_TIER=gpu``, set by ``nox -s gpu`` and tox) or any run given ``--require-gpu``
  outside the CPU tier; the variable alone does not make one, since the suite's own pytest runs
  (kill matrix, bisect, gate) inherit it. ``--collect-only`` runs are exempt.

Without either setting nothing changes: the GPU tests skip with their reasons.
"""

from __future__ import annotations

import os

import pytest

from gemma2_regress import gpu_check
from gemma2_regress.suite import TIER_ENV

_PLUGIN = "gemma2-require-gpu"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("gemma2-regress").addoption(
        gpu_check.REQUIRE_FLAG,
        action="store_true",
        help="a GPU is expected (as GEMMA2_REGRESS_REQUIRE_GPU=1): no CUDA device, or no gpu test run, fails",
    )


def required(config: pytest.Config) -> str | None:
    """What requires a GPU in this run (``--require-gpu`` or ``GEMMA2_REGRESS_REQUIRE_GPU=1``), or None."""
    flag = [gpu_check.REQUIRE_FLAG] if config.getoption("require_gpu", False) else []
    try:
        return gpu_check.required_by(flag)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def need_cuda(config: pytest.Config) -> None:
    """For a test on the ``cuda`` device: skip it where torch sees no CUDA device, or fail it (without a
    traceback) where a GPU is required."""
    if gpu_check.cuda_available():
        return
    why = required(config)
    if why:
        pytest.fail(f"GPU required ({why}) but torch sees no CUDA device", pytrace=False)
    pytest.skip("no CUDA GPU visible (the GPU tier needs one; the CPU tier covers the rest)")


def failure(config: pytest.Config) -> str | None:
    """The one-line failure of the zero-GPU-tests rule in this run, once it has tripped, else None."""
    rule = config.pluginmanager.get_plugin(_PLUGIN)
    return rule.failure if rule is not None else None


class _ZeroGpuTestsRule:
    """Counts the ``gpu``-marked tests that ran (on the controlling process: xdist forwards reports)."""

    def __init__(self, why: str) -> None:
        self.why = why
        self.seen: set[str] = set()  # gpu tests reported at all
        self.ran = 0  # gpu tests whose call phase ran (an xfail counts: it ran)
        self.skips: list[str] = []  # skip reasons, in report order
        self.errors = 0  # gpu tests that failed in setup (their call never ran)
        self.failure: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "gpu" not in report.keywords:
            return
        self.seen.add(report.nodeid)
        if report.when == "call" and (not report.skipped or hasattr(report, "wasxfail")):
            self.ran += 1
        elif report.when == "setup" and report.failed:
            self.errors += 1
        elif report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            self.skips.append(" ".join(str(reason).removeprefix("Skipped: ").split()))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.ran:
            return
        interrupted = session.exitstatus == pytest.ExitCode.INTERRUPTED  # a time bound's SIGINT, Ctrl-C
        if self.seen and interrupted and not self.skips and not self.errors:
            what = f"interrupted before any finished its call: {len(self.seen)} started"  # cut in a compile
        elif self.seen:
            what = f"{len(self.seen)} selected: {len(self.skips)} skipped, {self.errors} errors in setup"
            what += f"; first skip: {self.skips[0]}" if self.skips else ""
        elif interrupted:
            what = "interrupted before the first one"  # not a selection
        else:
            what = "none selected"
        self.failure = f"GPU required ({self.why}) but no gpu-marked test ran ({what})"
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(trylast=True)  # the last line before pytest's own counts
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.failure:
            terminalreporter.write_line(f"gemma2-regress: {self.failure}", red=True, bold=True)


def pytest_configure(config: pytest.Config) -> None:
    why = required(config)  # a bad GEMMA2_REGRESS_REQUIRE_GPU value stops the run here, in one line
    tier = os.environ.get(TIER_ENV, "")
    gpu_run = tier == "gpu" or (tier != "cpu" and config.getoption("require_gpu", False))
    if why and gpu_run and not hasattr(config, "workerinput") and not config.getoption("collectonly"):
        config.pluginmanager.register(_ZeroGpuTestsRule(why), _PLUGIN)
