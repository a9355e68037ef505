"""The per-example bookkeeping of the model-level properties: nothing is recorded as a pass unless judged.

(An H200 run stopped by its time limit once recorded the example it interrupted as ``ok`` with ratio 0.)
"""

from __future__ import annotations

import math

import pytest

from gemma2_regress import model_properties, report, tolerance


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.setattr(report, "RECORDS", [])
    monkeypatch.setattr(model_properties, "_write", lambda line: None)
    return report.RECORDS


def test_interrupt_is_recorded_as_interrupted(records: list[dict]) -> None:
    with pytest.raises(KeyboardInterrupt):
        with model_properties.example("p", "t", "case"):
            raise KeyboardInterrupt
    assert records[-1]["verdict"] == "interrupted" and math.isnan(records[-1]["ratio"])


def test_a_body_without_a_verdict_is_a_crash(records: list[dict]) -> None:
    with pytest.raises(RuntimeError, match="without a verdict"):
        with model_properties.example("p", "t", "case"):
            pass
    assert records[-1]["verdict"].startswith("crash:RuntimeError")


def test_a_judged_example_is_ok(records: list[dict]) -> None:
    import torch

    x = torch.zeros(3)
    with model_properties.example("p", "t", "case") as box:
        cmp = tolerance.compare(x, x.double(), x, dtype=torch.float32)
        model_properties._judge(box, "p", "t", "case", {"x": cmp})
    assert records[-1]["verdict"] == "ok"
