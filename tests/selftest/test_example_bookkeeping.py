"""The per-example bookkeeping of the model-level properties: nothing is recorded as a pass unless judged.

(An H200 run stopped by its time limit once recorded the example it interrupted as ``ok`` with ratio 0.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from gemma2_regress.model import properties as model_properties
from gemma2_regress.model.session import ModelSession
from gemma2_regress.plugins import report
from gemma2_regress.reference import tolerance


@pytest.fixture
def records(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict]]:
    """The records written from here on: a spool of their own keeps them out of the run's summary."""
    monkeypatch.setenv(report.SPOOL_ENV, str(tmp_path))
    return lambda: report.read_spool(tmp_path)


QUIET = ModelSession(write=lambda line: None)


def test_interrupt_is_recorded_as_interrupted(records: Callable[[], list[dict]]) -> None:
    with pytest.raises(KeyboardInterrupt):
        with model_properties.example("p", "t", "case", QUIET):
            raise KeyboardInterrupt
    assert records()[-1]["verdict"] == "interrupted" and math.isnan(records()[-1]["ratio"])


def test_a_body_without_a_verdict_is_a_crash(records: Callable[[], list[dict]]) -> None:
    with pytest.raises(RuntimeError, match="without a verdict"):
        with model_properties.example("p", "t", "case", QUIET):
            pass
    assert records()[-1]["verdict"].startswith("crash:RuntimeError")


def test_a_judged_example_is_ok(records: Callable[[], list[dict]]) -> None:
    import torch

    x = torch.zeros(3)
    with model_properties.example("p", "t", "case", QUIET) as box:
        cmp = tolerance.compare(x, x.double(), x, dtype=torch.float32)
        model_properties._judge(box, "p", "t", "case", {"x": cmp})
    assert records()[-1]["verdict"] == "ok"


def test_spooled_records_survive_a_killed_writer(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(report.SPOOL_ENV, str(tmp_path))
    report.record("p", "t", "ok", 0.5, "case 1")
    report.record("p", "t", "mismatch", 2.0, "case 2")
    (tmp_path / "gw9-1.jsonl").write_text('{"property": "p", "target": "t", "verdict"')  # cut short
    got = report.read_spool(tmp_path)
    assert [r["case"] for r in got] == ["case 1", "case 2"]
    assert report.worst_by_property(got)[0]["bad"] == 1


def test_examples_of_a_recorded_upstream_bug_count_as_known(
    records: Callable[[], list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/k.py::test_bug[cuda] (call)")
    report.record("p", "t", "nan", float("inf"), "the recorded case")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/k.py::test_other (call)")
    report.record("p", "t", "ok", 0.25, "a passing case")
    assert [r["test"] for r in records()] == ["tests/k.py::test_bug[cuda]", "tests/k.py::test_other"]
    xfailed = {"tests/k.py::test_bug[cuda]": {"outcome": "xfailed"}}
    (row,) = report.worst_by_property(records(), tests=xfailed)
    assert (row["bad"], row["known"], row["worst_ratio"]) == (0, 1, 0.25)
    # the same failure in a test that did not xfail is bad, and is the worst
    (row,) = report.worst_by_property(records(), tests={"tests/k.py::test_bug[cuda]": {"outcome": "failed"}})
    assert (row["bad"], row["known"], row["worst_ratio"]) == (1, 0, float("inf"))


def test_a_crash_whose_test_never_reported_in_an_interrupted_run_is_not_bad() -> None:
    """A warm H200 run cut by its time bound showed ``bad 1, worst inf``: the worker had recorded the crash
    of an example of a strict-xfail test, and the run stopped before that test's outcome reached the
    controller. Unjudged, so interrupted; the same record in a run that was not interrupted stays bad."""
    crash = {"property": "p", "target": "t", "verdict": "crash:RuntimeError", "ratio": math.inf, "case": "c"}
    ok = {
        "property": "p",
        "target": "t",
        "verdict": "ok",
        "ratio": 0.25,
        "case": "d",
        "test": "tests/k.py::test_ok",
    }
    crash["test"] = "tests/k.py::test_bug"
    tests = {"tests/k.py::test_ok": {"outcome": "passed"}}
    (row,) = report.worst_by_property([crash, ok], tests, interrupted=True)
    assert (row["bad"], row["interrupted"], row["worst_ratio"]) == (0, 1, 0.25)
    (row,) = report.worst_by_property([crash, ok], tests)
    assert (row["bad"], row["interrupted"], row["worst_ratio"]) == (1, 0, math.inf)
    # a test that did report (failed) is judged in an interrupted run too
    (row,) = report.worst_by_property(
        [crash, ok], {**tests, "tests/k.py::test_bug": {"outcome": "failed"}}, interrupted=True
    )
    assert (row["bad"], row["interrupted"]) == (1, 0)


def test_table_shows_peak_memory_and_time_split_from_the_records() -> None:
    records = [
        {"property": "k", "target": "t", "verdict": "ok", "ratio": 0.2, "case": "c"},
        {
            "property": "m",
            "target": "u",
            "verdict": "ok",
            "ratio": 0.1,
            "case": "a",
            "peak_gib": 3.5,
            "compile_s": 30.0,
            "run_s": 0.25,
            "reference_s": 2.0,
        },
        {
            "property": "m",
            "target": "u",
            "verdict": "ok",
            "ratio": 0.3,
            "case": "b",
            "peak_gib": 7.25,
            "compile_s": 0.0,
            "run_s": 0.5,
            "reference_s": 1.0,
        },
    ]
    rows = report.worst_by_property(records, tests={})
    assert (rows[1]["peak_gib"], rows[1]["compile_s"], rows[1]["run_s"]) == (7.25, 30.0, 0.75)
    header, kernel, model, split = report.table_lines(rows)
    assert (
        header.split()[-2:] == ["peak", "GiB"] and kernel.split()[-1] == "-" and model.split()[-1] == "7.25"
    )
    assert "compiled 30.0s" in split and "only ran 0.8s" in split and "reference 3.0s" in split


class Rep:
    def __init__(self, when: str, outcome: str, duration: float = 1.0, **extra: object) -> None:
        self.nodeid, self.when, self.duration = "t.py::x", when, duration
        self.passed, self.failed, self.skipped = (outcome == o for o in ("passed", "failed", "skipped"))
        self.__dict__.update(extra)


@pytest.mark.parametrize(
    ("reports", "outcome"),
    [
        ([Rep("setup", "passed"), Rep("call", "passed"), Rep("teardown", "passed")], "passed"),
        ([Rep("setup", "passed"), Rep("call", "failed")], "failed"),
        ([Rep("setup", "skipped")], "skipped"),
        ([Rep("setup", "failed")], "error"),
        ([Rep("call", "passed"), Rep("teardown", "failed")], "error"),
        ([Rep("call", "skipped", wasxfail="known")], "xfailed"),
        ([Rep("call", "passed", wasxfail="known")], "xpassed"),
    ],
)
def test_each_tests_verdict(reports: list[Rep], outcome: str) -> None:
    tests: dict[str, dict] = {}
    for rep in reports:
        report.note_test(tests, rep)
    assert tests["t.py::x"]["outcome"] == outcome
