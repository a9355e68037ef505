"""What the per-call diagnostics share (``profile_calls``, ``cache_keys``): the test calls a repeatable
``--OPTION TEXT`` chooses, the files written for each beside the run's ``summary.json``, and the line that
counts them at the end.

A test is chosen where its node id contains one of the TEXTs. Its files go to ``<FOLDER>/`` beside the
run's ``summary.json`` (``report.report_path``: ``reports/<tier>/`` or ``GEMMA2_REGRESS_REPORT``'s folder),
named by ``file_stem``, in whichever process ran the call, xdist workers included.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gemma2_regress.plugins import report


def file_stem(nodeid: str) -> str:
    """``nodeid`` as a file name: every character other than letters, digits, ``.``, ``-`` and ``_``
    replaced with ``_`` (no glob characters: ``[`` and ``]`` become ``_`` too), then ``-`` and 8 hex digits
    of its digest, so that two node ids never share a file."""
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9.\-_]", "_", nodeid) + "-" + digest


def folder(name: str) -> Path:
    """``name/`` beside this run's ``summary.json``."""
    return Path(report.report_path("summary.json", "GEMMA2_REGRESS_REPORT")).parent / name


class ChosenCalls:
    """A plugin object for the calls chosen by ``texts``; a subclass names its option, folder and files,
    and writes its files from its own ``pytest_runtest_call``."""

    OPTION: ClassVar[str]  # the command-line flag, e.g. "--profile-calls"
    FOLDER: ClassVar[str]  # where its files go, beside summary.json
    PATTERN: ClassVar[str]  # one file a call: the glob the last line counts
    WHAT: ClassVar[str]  # the last line's words for those files

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.since = time.time()

    def chosen(self, item: pytest.Item) -> bool:
        return any(text in item.nodeid for text in self.texts)

    def path(self, item: pytest.Item, suffix: str) -> Path:
        """The file ``<FOLDER>/<file_stem>suffix`` for ``item``, its folder made."""
        where = folder(self.FOLDER)
        where.mkdir(parents=True, exist_ok=True)
        return where / f"{file_stem(item.nodeid)}{suffix}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        # Counted from the folder: under xdist the workers wrote, and only this process prints.
        where = folder(self.FOLDER)
        made = (
            [p for p in where.glob(self.PATTERN) if p.stat().st_mtime >= self.since] if where.is_dir() else []
        )
        terminalreporter.write_line(
            f"{self.WHAT}: {len(made)} written to {where}/ ({self.OPTION} {' '.join(self.texts)})"
        )


def add_option(parser: pytest.Parser, flag: str, help: str) -> None:
    """A repeatable ``flag TEXT`` in the suite's option group."""
    parser.getgroup("gemma2-regress").addoption(flag, action="append", default=[], metavar="TEXT", help=help)


def register(config: pytest.Config, plugin: type[ChosenCalls], name: str) -> None:
    """Register ``plugin`` for the TEXTs given to its option, if any were."""
    texts = [t for t in config.getoption(plugin.OPTION.lstrip("-").replace("-", "_")) if t]
    if texts:
        config.pluginmanager.register(plugin(texts), name)
