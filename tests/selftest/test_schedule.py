"""The GPU tier's order: longest recorded (else estimated cold) time first, xdist groups kept together."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemma2_regress import records
from gemma2_regress.plugins import gpu_budget, schedule

ROOT = Path(__file__).resolve().parents[2]


class FakeItem:
    def __init__(self, name: str, group: str | None = None) -> None:
        self.name, self.originalname = name, name.split("[", 1)[0]
        self.nodeid = f"t.py::{name}"
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


def test_recorded_seconds_come_before_estimates(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm run's times reorder what the cold estimates put first; a test without a record keeps its
    estimate, and a group moves at the sum of its members' costs, recorded or not."""
    monkeypatch.setattr(schedule, "COLD_SECONDS", {"slow": 100.0, "member": 30.0, "mid": 50.0})
    items = [FakeItem("member[1]", "g"), FakeItem("mid"), FakeItem("slow[x]"), FakeItem("member[2]", "g")]
    recorded = {"t.py::slow[x]": 2.0, "t.py::member[1]": 5.0, "t.py::mid": 8.0}
    order = [it.name for it in schedule.heaviest_first(items, recorded)]
    assert order == ["member[1]", "member[2]", "mid", "slow[x]"]  # the group: 5 + 30 (no record)


FAKE_GPU = "from fixtures.fake_gpu import pytest_configure\n"

ORDERED = """
import os, pathlib
import pytest

@pytest.mark.gpu
@pytest.mark.parametrize("name", ["a", "b", "c", "d"])
def test_one(name):
    with open(pathlib.Path(__file__).parent / "ran.txt", "a") as out:
        out.write(name + "\\n")
"""


@pytest.mark.parametrize("gpu", ["fake", "other"])
def test_a_worker_runs_the_longest_recorded_test_first(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, gpu: str
) -> None:
    """In an xdist worker the plugin reads this stack's records (a fake GPU here) at collection; one worker
    then runs the tests in that order. The records of every GPU of the stack count, the longest time where
    two hold a test, so that workers pinned to different GPUs order alike (xdist aborts otherwise)."""
    pytester.makeconftest(FAKE_GPU)
    module = pytester.makepyfile(test_ordered=ORDERED)
    cache = pytester.path / "inductor"
    for key, times in [
        ({"gpu": "fake"}, {"a": 1.0, "b": 3.0, "c": 2.0}),
        ({"gpu": "other"}, {"a": 4.0}),
        ({"gpu": "fake", "unsloth": "another release"}, {"c": 99.0}),  # another stack: not used
    ]:
        peaks = gpu_budget.Peaks(records.path(cache, records.GPU_PEAKS, key), key)
        for name, seconds in times.items():
            peaks.put(f"test_ordered.py::test_one[{name}]", gpu_budget.source_digest(module), 1.0, seconds)
    monkeypatch.setenv("FAKE_GPU", gpu)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.setenv(gpu_budget.SWITCH_ENV, "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-n", "1", "--dist", "loadgroup", "-p", "no:cacheprovider"]
    args += ["-p", "gemma2_regress.plugins.markers"]
    args += ["-p", "gemma2_regress.plugins.report", "-p", "gemma2_regress.plugins.gpu_budget"]
    result = pytester.runpytest_subprocess(*args, "-p", "gemma2_regress.plugins.schedule", timeout=120)
    result.assert_outcomes(passed=4)
    # d has no record: its estimate, 10 s; a: 4 s on the other GPU
    assert (pytester.path / "ran.txt").read_text().split() == ["d", "a", "b", "c"]


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
