"""gemma2_regress.plugins.profile_calls: ``--profile-calls TEXT`` profiles the calls of the tests whose node id
contains TEXT, and only those, also in xdist workers; without the option nothing is written."""

from __future__ import annotations

import pstats

import pytest

from gemma2_regress.plugins.chosen_calls import file_stem

PLUGIN = ("-p", "gemma2_regress.plugins.profile_calls", "-p", "no:cacheprovider")

TESTS = """
import pytest

def slow_part():
    return sum(range(10000))

@pytest.mark.parametrize("n", [1, 2])
def test_picked(n):
    assert slow_part() > n

def test_other():
    slow_part()
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("GEMMA2_REGRESS_REPORT", str(pytester.path / "out" / "summary.json"))
    pytester.makepyfile(test_inner=TESTS)
    return pytester


@pytest.mark.parametrize("workers", [None, "2"])
def test_only_the_chosen_calls_are_profiled(suite, workers):
    args = [*PLUGIN, "--profile-calls", "test_picked"]
    if workers:
        args += ["-n", workers, "-p", "xdist"]
    result = suite.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3)
    folder = suite.path / "out" / "profiles"
    one, two = (file_stem(f"test_inner.py::test_picked[{n}]") for n in (1, 2))
    made = sorted(p.name for p in folder.iterdir())
    assert made == sorted([f"{one}.prof", f"{one}.txt", f"{two}.prof", f"{two}.txt"])
    # The raw statistics load, and hold the test's own function.
    stats = pstats.Stats(str(folder / f"{one}.prof"))
    assert any(name == "slow_part" for (_, _, name) in stats.stats)
    text = (folder / f"{two}.txt").read_text()
    assert text.startswith("test_inner.py::test_picked[2] (pid ")
    assert "slow_part" in text
    result.stdout.fnmatch_lines(
        [f"profiled test calls: 2 written to {folder}/ (--profile-calls test_picked)"]
    )


def test_without_the_option_nothing_is_written(suite):
    result = suite.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(passed=3)
    assert not (suite.path / "out").exists()
    assert "profiled test calls" not in result.stdout.str()
