"""Known upstream bugs, each recorded once with the Unsloth versions it affects, as a strict xfail.

An entry in ``fixtures/known_issues.py`` names tests (``path::function`` or a bare function name,
every parametrization included) and the affected versions
as a PEP 440 specifier. When the installed Unsloth is in that range, the matching tests are marked
``xfail(strict=True)``: they must still fail, so the release that fixes the bug turns the suite red
(XPASS) until the entry's range is closed. Outside the range the tests run normally. A record marked
``machine_dependent`` (a bug that shows on some CPUs and not others) marks nothing: its test names the
recorded failure itself.

With ``GEMMA2_REGRESS_KNOWN_ISSUES=ignore`` the records are set aside: no test is marked and no input is
left out, so a run says what the build does, not whether it matches the records. Bisect and gate runs
set it (``builds/runner.py``): a recorded bug is exactly what a bisect over its range looks for.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.specifiers import SpecifierSet
from packaging.version import Version

if TYPE_CHECKING:
    import pytest


@dataclasses.dataclass(frozen=True)
class KnownIssue:
    """One upstream bug: where it was reported, which tests show it, which Unsloth versions have it."""

    id: str  # e.g. "unslothai/unsloth#853"
    summary: str
    tests: tuple[str, ...]  # "tests/x.py::test_f" or "test_f"; all parametrizations match
    affected: str  # PEP 440 specifier over unsloth versions, e.g. ">=2026.10.0,<=2026.10.9"
    raises: tuple[type[BaseException], ...] | None = None
    # Inputs that trigger it in the generic properties, as (target name, case, device) -> bool. While the
    # installed release is affected, those properties leave such inputs to the pinned tests above
    # (``assume_not_known``); once a release is outside ``affected`` they are drawn again.
    trigger: Callable[[str, object, str], bool] | None = None
    # True for a bug whose showing depends on the machine (a heap corruption that aborts on one CPU and
    # not on another): its tests are not marked, since a strict xfail would turn red wherever the bug
    # stays hidden. Such a test names the recorded failure itself (``pytest.xfail`` after checking that
    # it is that failure, on an affected release) and fails on anything else.
    machine_dependent: bool = False

    def affects(self, unsloth_version: str | None) -> bool:
        return unsloth_version is not None and Version(unsloth_version) in SpecifierSet(self.affected)

    def applies_to(self, nodeid: str, unsloth_version: str | None) -> bool:
        """``tests`` entries with ``[...]`` name one parametrization; without, all of them."""
        base = nodeid.split("[", 1)[0]
        named = any(
            (nodeid == t or nodeid.endswith("::" + t)) if "[" in t else (base == t or base.endswith("::" + t))
            for t in self.tests
        )
        return named and self.affects(unsloth_version)


IGNORE_ENV = "GEMMA2_REGRESS_KNOWN_ISSUES"  # "ignore": the records are set aside for this run


def records_ignored() -> bool:
    """Whether this run sets the records aside (``GEMMA2_REGRESS_KNOWN_ISSUES=ignore``)."""
    return os.environ.get(IGNORE_ENV, "").strip().lower() == "ignore"


def suite_nodeid(item: pytest.Item, suite_root: Path | None) -> str:
    """The item's node id as the records name it, relative to the suite's root (``tests/x.py::test_y``)
    whatever pytest's rootdir: a suite file run under another project's rootdir still matches."""
    if suite_root is None:
        return item.nodeid
    try:
        rel = Path(item.path).resolve().relative_to(suite_root.resolve()).as_posix()
    except ValueError:
        return item.nodeid
    _, sep, rest = item.nodeid.partition("::")
    return rel + sep + rest


def mark_items(
    items: list[pytest.Item],
    issues: list[KnownIssue],
    unsloth_version: str | None,
    suite_root: Path | None = None,
) -> int:
    """Add a strict xfail to every collected test a known issue applies to (node ids taken relative to
    ``suite_root`` where given); return how many (none while the records are set aside)."""
    if records_ignored():
        return 0
    import pytest  # here: the runner imports this module for IGNORE_ENV where pytest may be absent

    n = 0
    for item in items:
        nodeid = suite_nodeid(item, suite_root)
        for issue in issues:
            if not issue.machine_dependent and issue.applies_to(nodeid, unsloth_version):
                item.add_marker(
                    pytest.mark.xfail(
                        strict=True,
                        raises=issue.raises,
                        reason=f"known upstream issue {issue.id} (unsloth {issue.affected}): {issue.summary}",
                    )
                )
                n += 1
    return n


def assume_not_known(
    issues: list[KnownIssue], target: str, case: object, device: str, unsloth_version: str | None
) -> None:
    """Inside a Hypothesis test: skip this input if it triggers a recorded bug of the installed
    release (its pinned strict-xfail test covers it), so the property keeps checking the rest. Not while
    the records are set aside."""
    if records_ignored():
        return
    import hypothesis

    for issue in issues:
        if (
            issue.trigger is not None
            and issue.affects(unsloth_version)
            and issue.trigger(target, case, device)
        ):
            hypothesis.note(f"input triggers known upstream issue {issue.id}; left to its pinned test")
            hypothesis.assume(False)
