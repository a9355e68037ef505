"""The GPU tier's order: longest estimated cold time first, xdist groups kept together."""

from __future__ import annotations

import pytest

from gemma2_regress.plugins import schedule


class FakeItem:
    def __init__(self, name: str, group: str | None = None) -> None:
        self.name, self.originalname = name, name.split("[", 1)[0]
        self._group = group

    def get_closest_marker(self, name: str):
        if name == "xdist_group" and self._group:
            return pytest.mark.xdist_group(self._group).mark
        return None


def test_longest_first_groups_move_together_ties_keep_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "COLD_SECONDS", {"slow": 100.0, "member": 30.0, "mid": 50.0})
    items = [
        FakeItem("unknown_a"),
        FakeItem("member[1]", "g"),
        FakeItem("mid"),
        FakeItem("slow[x]"),
        FakeItem("member[2]", "g"),
        FakeItem("unknown_b"),
    ]
    order = [it.name for it in schedule.heaviest_first(items)]
    assert order == ["slow[x]", "member[1]", "member[2]", "mid", "unknown_a", "unknown_b"]
