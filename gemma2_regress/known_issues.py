"""Known upstream bugs, each recorded once with the Unsloth versions it affects, as a strict xfail.

An entry in ``fixtures/known_issues.py`` names tests (``path::function`` or a bare function name,
every parametrization included) and the affected versions
as a PEP 440 specifier. When the installed Unsloth is in that range, the matching tests are marked
``xfail(strict=True)``: they must still fail, so the release that fixes the bug turns the suite red
(XPASS) until the entry's range is closed. Outside the range the tests run normally.
"""

from __future__ import annotations

import dataclasses

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version


@dataclasses.dataclass(frozen=True)
class KnownIssue:
    """One upstream bug: where it was reported, which tests show it, which Unsloth versions have it."""

    id: str  # e.g. "unslothai/unsloth#853"
    summary: str
    tests: tuple[str, ...]  # "tests/x.py::test_f" or "test_f"; all parametrizations match
    affected: str  # PEP 440 specifier over unsloth versions, e.g. ">=2026.10.0,<=2026.10.9"
    raises: tuple[type[BaseException], ...] | None = None

    def applies_to(self, nodeid: str, unsloth_version: str | None) -> bool:
        base = nodeid.split("[", 1)[0]
        if unsloth_version is None or not any(base == t or base.endswith("::" + t) for t in self.tests):
            return False
        return Version(unsloth_version) in SpecifierSet(self.affected)


def mark_items(items: list[pytest.Item], issues: list[KnownIssue], unsloth_version: str | None) -> int:
    """Add a strict xfail to every collected test a known issue applies to; return how many."""
    n = 0
    for item in items:
        for issue in issues:
            if issue.applies_to(item.nodeid, unsloth_version):
                item.add_marker(
                    pytest.mark.xfail(
                        strict=True,
                        raises=issue.raises,
                        reason=f"known upstream issue {issue.id} (unsloth {issue.affected}): {issue.summary}",
                    )
                )
                n += 1
    return n
