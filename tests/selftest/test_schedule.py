"""The GPU tier's order: longest estimated cold time first, xdist groups kept together."""

from __future__ import annotations

import pytest

from gemma2_regress.plugins import schedule


class FakeItem:
    def __init__(self, name: str, group: str | None = None) -> None:
        self.name, self.originalname = name, name.split("[", 1)[0]
        self._group = group

    def get_closest_marker(self, name: str):
        if name == "xdist_group" and self._group:
            return pytest.mark.xdist_group(self._group).mark
        return None


def test_longest_first_groups_move_together_ties_keep_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "COLD_SECONDS", {"slow": 100.0, "member": 30.0, "mid": 50.0})
    items = [
        FakeItem("unknown_a"),
        FakeItem("member[1]", "g"),
        FakeItem("mid"),
        FakeItem("slow[x]"),
        FakeItem("member[2]", "g"),
        FakeItem("unknown_b"),
    ]
    order = [it.name for it in schedule.heaviest_first(items)]
    assert order == ["slow[x]", "member[1]", "member[2]", "mid", "unknown_a", "unknown_b"]


CRASHING = """
import ctypes
import pytest

@pytest.mark.xdist_group("g")
def test_before():
    pass

@pytest.mark.xdist_group("g")
def test_crashes_its_worker():
    ctypes.string_at(0)  # a segfault, as compiled code may give

def test_elsewhere():
    pass
"""


def test_a_crashed_worker_ends_the_run_instead_of_hanging(pytester: pytest.Pytester) -> None:
    """Under ``--dist loadgroup`` a restarted worker would hang the run; with the plugin it ends, red."""
    pytester.makepyfile(test_crash=CRASHING)
    args = [
        "-p",
        "gemma2_regress.plugins.schedule",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "-p",
        "no:cacheprovider",
    ]
    result = pytester.runpytest_subprocess(*args, timeout=120)
    outcomes = result.parseoutcomes()  # the other worker's test may or may not finish before the stop
    assert outcomes.get("failed") == 1 and outcomes.get("passed", 0) <= 2, outcomes
    result.stdout.fnmatch_lines(["*crashed while running*test_crashes_its_worker*"])


GROUPED = """
import os
import pathlib
import pytest

@pytest.mark.xdist_group("g")
@pytest.mark.parametrize("i", range(6))
def test_member(i):
    (pathlib.Path(__file__).parent / f"ran_{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""


def test_xdist_groups_hold_under_the_locked_pytest(pytester: pytest.Pytester) -> None:
    """Every member of an ``xdist_group`` runs on one worker under ``--dist loadgroup``. The suite's groups
    rely on it (one worker keeps the compiled kernels and the 8k references); pytest 9.2 with xdist 3.8
    spreads them silently (pytest-dev/pytest-xdist#1386), which is why requirements/test.in keeps pytest
    below 9.2."""
    pytester.makepyfile(test_grouped=GROUPED)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    workers = {f.read_text() for f in pytester.path.glob("ran_*")}
    assert len(workers) == 1, f"the group ran on {sorted(workers)}: xdist's loadgroup is inert here"
