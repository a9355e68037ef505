"""Fixtures of the trainer tests (shared with tests/model: fixtures/model.py)."""

from __future__ import annotations

from fixtures.model import (
    _accelerate_environment,
    _bind_session,
    model_session,
    unsloth_ready,
)

__all__ = ["_accelerate_environment", "_bind_session", "model_session", "unsloth_ready"]
