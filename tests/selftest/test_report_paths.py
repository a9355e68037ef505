"""Reports per tier: reports/<tier>/summary.json and costs.json, so no tier overwrites another's."""

from __future__ import annotations

import pytest

from gemma2_regress import suite
from gemma2_regress.plugins import report


@pytest.mark.parametrize(
    ("tier", "override", "expected"),
    [
        (None, None, "reports/pytest/summary.json"),  # a plain pytest run
        ("cpu", None, "reports/cpu/summary.json"),
        ("gpu", None, "reports/gpu/summary.json"),
        ("gpu", "out/s.json", "out/s.json"),
        ("gpu", "out/{tier}-s.json", "out/gpu-s.json"),
        (None, "out/{tier}-s.json", "out/pytest-s.json"),
    ],
)
def test_report_path(monkeypatch, tier, override, expected):
    for name, value in ((suite.TIER_ENV, tier), ("GEMMA2_REGRESS_REPORT", override)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert report.report_path("summary.json", "GEMMA2_REGRESS_REPORT") == expected


def test_a_tier_named_by_the_caller(monkeypatch):
    """What nox prints for a tier it is about to run, whatever this process's own tier."""
    monkeypatch.setenv(suite.TIER_ENV, "cpu")
    monkeypatch.delenv("GEMMA2_REGRESS_COSTS", raising=False)
    assert report.report_path("costs.json", "GEMMA2_REGRESS_COSTS", "gpu") == "reports/gpu/costs.json"
