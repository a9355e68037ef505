"""cProfile of chosen test calls, under the run's own conditions (its workers, caches and GPU).

A pytest plugin (registered from conftest with ``pytest_plugins``). ``--profile-calls TEXT`` (repeatable)
runs the call phase of every test whose node id contains TEXT under ``cProfile`` (setup and teardown are
not profiled), in whichever process runs it, xdist workers included. For each such call it writes, beside
the run's ``summary.json`` (``report.report_path``: ``reports/<tier>/`` or ``GEMMA2_REGRESS_REPORT``'s
folder), into ``profiles/``:

- ``<node id>.prof``: the raw statistics (``python -m pstats FILE``, snakeviz, ...);
- ``<node id>.txt``: the 60 functions with the most cumulative time, then the 40 with the most own time.

The node id is made a file name by replacing every character other than letters, digits, ``.``, ``-`` and
``_`` with ``_`` (no glob characters: ``[`` and ``]`` become ``_`` too), then ``-`` and 8 hex digits of
its digest, so that two node ids never share a file. Both files are written atomically. The run's last
lines say how many calls were profiled and where. Cost: none unless the option is given; a profiled call
runs slower (cProfile's hooks on every Python call), so its duration is not comparable with others.
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import marshal
import os
import pstats
import re
import time
from pathlib import Path
from typing import Any

import pytest

from gemma2_regress.atomic import write_bytes_atomic, write_text_atomic
from gemma2_regress.plugins import report

FOLDER = "profiles"
TOP_CUMULATIVE, TOP_OWN = 60, 40


def file_stem(nodeid: str) -> str:
    """``nodeid`` as a file name (module doc)."""
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:8]  # two node ids never share a file
    return re.sub(r"[^A-Za-z0-9.\-_]", "_", nodeid) + "-" + digest


def folder() -> Path:
    """Where this run writes its profiles: ``profiles/`` beside its ``summary.json``."""
    return Path(report.report_path("summary.json", "GEMMA2_REGRESS_REPORT")).parent / FOLDER


def summary_text(profile: cProfile.Profile) -> str:
    """The text summary of ``profile`` (module doc)."""
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(TOP_CUMULATIVE)
    stats.sort_stats("tottime").print_stats(TOP_OWN)
    return out.getvalue()


class _Profiler:
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.since = time.time()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        if not any(text in item.nodeid for text in self.texts):
            return (yield)
        profile = cProfile.Profile()
        profile.enable()
        try:
            return (yield)
        finally:
            profile.disable()
            where = folder()
            where.mkdir(parents=True, exist_ok=True)
            stem = file_stem(item.nodeid)
            profile.create_stats()  # what Profile.dump_stats writes, written here atomically
            write_bytes_atomic(where / f"{stem}.prof", marshal.dumps(profile.stats))
            write_text_atomic(
                where / f"{stem}.txt", f"{item.nodeid} (pid {os.getpid()})\n{summary_text(profile)}"
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        # Counted from the folder: under xdist the workers profiled, and only this process prints.
        where = folder()
        made = [p for p in where.glob("*.prof") if p.stat().st_mtime >= self.since] if where.is_dir() else []
        terminalreporter.write_line(
            f"profiled test calls: {len(made)} written to {where}/ (--profile-calls {' '.join(self.texts)})"
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("gemma2-regress").addoption(
        "--profile-calls",
        action="append",
        default=[],
        metavar="TEXT",
        help="run the call of every test whose node id contains TEXT under cProfile; the statistics go to "
        "profiles/ beside summary.json (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    texts = [t for t in config.getoption("profile_calls") if t]
    if texts:
        config.pluginmanager.register(_Profiler(texts), "gemma2-regress-profile-calls")
