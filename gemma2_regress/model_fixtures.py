"""pytest fixtures shared by the model-level and trainer tests (imported by their conftests).

On a CUDA machine with Unsloth installed, ``import_unsloth_first`` imports Unsloth at collection,
before any test module imports transformers (Unsloth patches transformers and TRL on import and
warns otherwise).
"""

from __future__ import annotations

import time

import pytest

from . import model_properties, model_targets, unsloth_adapter


def import_unsloth_first() -> None:
    """Import Unsloth now where it can run; a failure is left to each test that needs it."""
    if model_targets.unsloth_skip_reason() is not None:
        return
    t0 = time.perf_counter()
    try:
        unsloth_adapter.load()
    except unsloth_adapter.UnslothUnavailable:
        pass  # each test that needs Unsloth then fails with the reason (an install that does not import)
    model_targets.TIMINGS.load_s += time.perf_counter() - t0


@pytest.fixture(autouse=True)
def _example_lines(request: pytest.FixtureRequest) -> None:
    """Per-example lines (verdict, ratio, compile/run seconds, peak GPU memory) go to the terminal."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    model_properties.set_writer(reporter.write_line if reporter is not None else print)


@pytest.fixture(scope="session")
def unsloth_ready() -> None:
    """Skip, saying why, where Unsloth's model cannot run (no CUDA GPU, or Unsloth not installed)."""
    reason = model_targets.unsloth_skip_reason()
    if reason:
        pytest.skip(reason)
