"""Fixtures of the trainer tests; see tests/model/conftest.py for why Unsloth is imported first."""

from __future__ import annotations

import pytest

from gemma2_regress import model_properties, model_targets, unsloth_adapter

if model_targets.unsloth_skip_reason() is None:
    try:
        unsloth_adapter.load()
    except unsloth_adapter.UnslothUnavailable:
        pass  # each test that needs Unsloth then fails with the reason (an install that does not import)


@pytest.fixture(autouse=True)
def _example_lines(request: pytest.FixtureRequest) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    model_properties.set_writer(reporter.write_line if reporter is not None else print)


@pytest.fixture(scope="session")
def unsloth_ready() -> None:
    """Skip, saying why, where Unsloth's model cannot run (no CUDA GPU, or Unsloth not installed)."""
    reason = model_targets.unsloth_skip_reason()
    if reason:
        pytest.skip(reason)
