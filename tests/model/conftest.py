"""Fixtures of the model-level tests (fixtures/model.py) and the time split."""

from __future__ import annotations

import pytest

from fixtures.model import (
    _accelerate_environment,
    _bind_session,
    model_session,
    time_split,
    unsloth_ready,
)

__all__ = ["_accelerate_environment", "_bind_session", "model_session", "unsloth_ready"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    time_split(terminalreporter, config)
