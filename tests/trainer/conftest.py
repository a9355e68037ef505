"""Fixtures of the trainer tests (shared with tests/model: fixtures/model.py)."""

from __future__ import annotations

import pytest

from fixtures.model import (
    _accelerate_environment,
    _bind_session,
    import_unsloth_first,
    model_session,
    unsloth_ready,
)

__all__ = ["_accelerate_environment", "_bind_session", "model_session", "unsloth_ready"]


def pytest_configure(config: pytest.Config) -> None:
    import_unsloth_first(config)
