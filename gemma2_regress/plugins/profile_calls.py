"""cProfile of chosen test calls, under the run's own conditions (its workers, caches and GPU).

A pytest plugin (registered from conftest with ``pytest_plugins``). ``--profile-calls TEXT`` (repeatable)
runs the call phase of every test whose node id contains TEXT under ``cProfile`` (setup and teardown are
not profiled), in whichever process runs it, xdist workers included. For each such call it writes, beside
the run's ``summary.json`` (``report.report_path``: ``reports/<tier>/`` or ``GEMMA2_REGRESS_REPORT``'s
folder), into ``profiles/``:

- ``<node id>.prof``: the raw statistics (``python -m pstats FILE``, snakeviz, ...);
- ``<node id>.txt``: the 60 functions with the most cumulative time, then the 40 with the most own time.

The node id is made a file name by ``chosen_calls.file_stem``. Both files are written atomically. The run's last
lines say how many calls were profiled and where. Cost: none unless the option is given; a profiled call
runs slower (cProfile's hooks on every Python call), so its duration is not comparable with others.
"""

from __future__ import annotations

import cProfile
import io
import marshal
import os
import pstats
from typing import Any

import pytest

from gemma2_regress.atomic import write_bytes_atomic, write_text_atomic
from gemma2_regress.plugins import chosen_calls

TOP_CUMULATIVE, TOP_OWN = 60, 40


def summary_text(profile: cProfile.Profile) -> str:
    """The text summary of ``profile`` (module doc)."""
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(TOP_CUMULATIVE)
    stats.sort_stats("tottime").print_stats(TOP_OWN)
    return out.getvalue()


class _Profiler(chosen_calls.ChosenCalls):
    OPTION, FOLDER, PATTERN, WHAT = "--profile-calls", "profiles", "*.prof", "profiled test calls"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        if not self.chosen(item):
            return (yield)
        profile = cProfile.Profile()
        profile.enable()
        try:
            return (yield)
        finally:
            profile.disable()
            profile.create_stats()  # what Profile.dump_stats writes, written here atomically
            write_bytes_atomic(self.path(item, ".prof"), marshal.dumps(profile.stats))
            write_text_atomic(
                self.path(item, ".txt"), f"{item.nodeid} (pid {os.getpid()})\n{summary_text(profile)}"
            )


def pytest_addoption(parser: pytest.Parser) -> None:
    chosen_calls.add_option(
        parser,
        _Profiler.OPTION,
        "run the call of every test whose node id contains TEXT under cProfile; the statistics go to "
        "profiles/ beside summary.json (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    chosen_calls.register(config, _Profiler, "gemma2-regress-profile-calls")
