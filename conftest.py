"""Suite-wide pytest set-up: Hypothesis profiles, the device fixture, the header and the reports.

Profiles (pick with ``--hypothesis-profile`` or ``HYPOTHESIS_PROFILE``; ``CI`` set picks ``ci``):
  ci       deterministic (derandomize, no database), few examples: what CI and `nox -s cpu` run
  dev      random, a local database, a few more examples: day-to-day work
  gpu      deterministic, sized for the GPU tier on one H200
  nightly  random, many examples: a long search for new counterexamples
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest
from hypothesis import HealthCheck, settings

from gemma2_regress import versions
from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.plugins import report
from gemma2_regress.plugins.report import (
    note_test,  # by name: pytest's hook argument `report` shadows the module
)

pytest_plugins = [
    "gemma2_regress.plugins.costs",  # the suite's own cost per tier/target (docs/perf.md)
    "gemma2_regress.mutants.plugin",  # --mutant NAME: planted bugs in the installed Unsloth (docs/mutants.md)
    "gemma2_regress.plugins.require_gpu",  # --require-gpu / GEMMA2_REGRESS_REQUIRE_GPU=1: no GPU fails, not skips
]

_COMMON = dict(
    deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("ci", derandomize=True, database=None, max_examples=12, **_COMMON)
settings.register_profile("dev", max_examples=25, **_COMMON)
settings.register_profile("gpu", derandomize=True, database=None, max_examples=40, **_COMMON)
settings.register_profile("nightly", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config: pytest.Config) -> None:
    # One xdist worker per GPU, each pinned to its own device before CUDA is initialised.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    gpus = os.environ.get("GEMMA2_REGRESS_GPUS")  # set by `nox -s gpu` to the device count
    if worker.startswith("gw") and gpus and int(gpus) > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker[2:]) % int(gpus))
    try:  # Unsloth's kernel is torch.compile'd; Hypothesis draws many configurations, and past
        import torch._dynamo  # dynamo's default 8 recompiles it would silently run eagerly instead.

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 512)
    except ImportError:
        pass
    config._gemma2_started = time.time()  # type: ignore[attr-defined]
    if _controller(config):  # xdist workers, started after this, inherit the spool folder's name
        config._gemma2_spool = tempfile.mkdtemp(prefix="gemma2-records-")  # type: ignore[attr-defined]
        os.environ[report.SPOOL_ENV] = config._gemma2_spool  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)  # after `-m` / `-k` have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from fixtures.known_issues import KNOWN_ISSUES
    from gemma2_regress.plugins.schedule import heaviest_first
    from gemma2_regress.plugins.strict_xfail import mark_items
    from gemma2_regress.unsloth_adapter import installed_version

    mark_items(items, KNOWN_ISSUES, installed_version())
    # The GPU tier under xdist (only workers collect): longest first. In one process the given order
    # stands: the kill matrix's `-x` runs list model tests first, so a model-level kill is quoted.
    if hasattr(config, "workerinput") and items and all(it.get_closest_marker("gpu") for it in items):
        items[:] = heaviest_first(items)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from hypothesis import settings as s

    return [
        f"gemma2-regress: {versions.one_line()}",
        versions.tools_line(),
        f"hypothesis profile: {s._current_profile}",
    ]


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES, scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """Every device-generic property runs once per device; ``cuda`` only in the GPU tier. Without a CUDA
    device ``cuda`` skips, or fails where a GPU is required (``--require-gpu``, GEMMA2_REGRESS_REQUIRE_GPU=1)."""
    if request.param == "cuda":
        from gemma2_regress.plugins.require_gpu import (
            need_cuda,  # here: a plugin, imported by pytest_plugins first
        )

        need_cuda(request.config)
    return request.param


def _controller(config: pytest.Config) -> bool:
    """The pytest process that reports (not an xdist worker)."""
    return not hasattr(config, "workerinput")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:  # xdist forwards workers' reports
    note_test(report)


def pytest_unconfigure(config: pytest.Config) -> None:
    spool = getattr(config, "_gemma2_spool", None)
    if spool:
        shutil.rmtree(spool, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _controller(config):
        return
    spool = getattr(config, "_gemma2_spool", None)
    records = report.read_spool(spool) if spool else report.RECORDS
    rows = report.worst_by_property(records)
    if not rows and not report.TESTS:
        return
    if rows:
        terminalreporter.section(
            "gemma2-regress: worst error ratio per property (1.0 = at the tolerance bound)"
        )
        for line in report.table_lines(rows):
            terminalreporter.write_line(line)
    out = report.report_path("summary.json", "GEMMA2_REGRESS_REPORT")
    from gemma2_regress.plugins.require_gpu import failure

    if exitstatus == 0 and failure(config):  # the zero-GPU-tests rule turned the run red
        exitstatus = pytest.ExitCode.TESTS_FAILED
    write_json_atomic(
        out,
        {
            "versions": versions.versions(),
            "exit_status": int(exitstatus),
            "wall_s": round(time.time() - config._gemma2_started, 1),  # type: ignore[attr-defined]
            "tests": report.TESTS,
            "properties": rows,
            "records": records,
        },
    )
    terminalreporter.write_line(f"summary JSON: {out}")
