"""Fixtures of the trainer tests (shared with tests/model: fixtures/model.py)."""

from __future__ import annotations

from fixtures.model import _example_lines, import_unsloth_first, unsloth_ready

__all__ = ["_example_lines", "unsloth_ready"]
import_unsloth_first()
