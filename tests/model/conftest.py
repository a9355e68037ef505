"""Fixtures of the model-level tests (fixtures/model.py) and the time split."""

from __future__ import annotations

from fixtures.model import _example_lines, import_unsloth_first, unsloth_ready
from gemma2_regress.model import targets as model_targets

__all__ = ["_example_lines", "unsloth_ready"]
import_unsloth_first()


def pytest_terminal_summary(terminalreporter) -> None:
    t = model_targets.TIMINGS
    if model_targets.unsloth_skip_reason() is not None or t.compile_calls + t.run_calls == 0:
        return
    terminalreporter.section("gemma2-regress: model-level time split (GPU tier)")
    for line in model_targets.timings_lines():
        terminalreporter.write_line(line)
