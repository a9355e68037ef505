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


@pytest.hookimpl(tryfirst=True)  # after collection (xdist has every worker's), before the first test
def pytest_runtestloop(session: pytest.Session) -> None:
    import_unsloth_first(session.config)
