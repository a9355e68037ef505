"""Known upstream issues turn into strict xfails only on the versions they affect."""

from __future__ import annotations

import pytest

from fixtures.known_issues import KNOWN_ISSUES
from gemma2_regress.plugins.strict_xfail import KnownIssue

ISSUE = KnownIssue(id="example#1", summary="demo", tests=("test_decode",), affected=">=2026.10.0,<=2026.10.9")


@pytest.mark.parametrize(
    ("nodeid", "version", "applies"),
    [
        ("tests/model/x.py::test_decode", "2026.10.9", True),
        ("tests/model/x.py::test_decode[b2-fp32]", "2026.10.9", True),  # every parametrization
        ("tests/model/x.py::test_decode", "2026.11.1", False),  # fixed upstream: runs normally
        ("tests/model/x.py::test_decode", "2026.9.30", False),
        ("tests/model/x.py::test_decode_longer_name", "2026.10.9", False),  # no substring matches
        ("tests/model/x.py::test_other[test_decode]", "2026.10.9", False),
        ("tests/model/x.py::test_decode", None, False),  # Unsloth not installed
    ],
)
def test_applies_only_in_range(nodeid: str, version: str | None, applies: bool) -> None:
    assert ISSUE.applies_to(nodeid, version) is applies


def test_a_named_parametrization_matches_only_itself() -> None:
    one = KnownIssue(id="x", summary="s", tests=("t.py::test_k[cpu-eager]",), affected="==1.0")
    assert one.applies_to("t.py::test_k[cpu-eager]", "1.0")
    assert not one.applies_to("t.py::test_k[cpu-compiled]", "1.0")


@pytest.mark.parametrize(
    ("machine_dependent", "outcomes", "marked"),
    [
        (False, {"failed": 1}, 1),  # the upstream fix: the strict xfail's XPASS fails the run
        (True, {"passed": 1}, 0),  # a bug only some machines show: no mark, so where it hides the test passes
    ],
)
def test_an_affected_test_that_passes(
    pytester: pytest.Pytester, machine_dependent: bool, outcomes: dict, marked: int
) -> None:
    """A recorded test that starts passing turns the run red (XPASS strict), unless its record is
    machine-dependent."""
    pytester.makepyfile(
        test_demo="""
        def test_decode_step_fixed():
            assert True
        """,
        conftest=f"""
        from gemma2_regress.plugins.strict_xfail import KnownIssue, mark_items
        ISSUES = [KnownIssue(id="x", summary="s", tests=("test_decode_step_fixed",), affected="==1.0",
                             machine_dependent={machine_dependent})]
        def pytest_collection_modifyitems(config, items):
            assert mark_items(items, ISSUES, "1.0") == {marked}
        """,
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(**outcomes)
    if not machine_dependent:
        result.stdout.fnmatch_lines(["*XPASS(strict)*"])


def test_catalogue_is_well_formed() -> None:
    from packaging.specifiers import SpecifierSet

    ids = [i.id for i in KNOWN_ISSUES]
    assert len(ids) == len(set(ids)), "each known issue is recorded once"
    for issue in KNOWN_ISSUES:
        assert issue.tests and issue.summary
        SpecifierSet(issue.affected)  # raises on a malformed range


def test_records_set_aside_for_bisect_and_gate(pytester: pytest.Pytester, monkeypatch) -> None:
    """GEMMA2_REGRESS_KNOWN_ISSUES=ignore (what bisect and gate runs set): the recorded test runs and
    fails as what it is, and an input a trigger names is not left out."""
    from gemma2_regress.builds.runner import Selection
    from gemma2_regress.plugins import strict_xfail

    assert Selection([]).known_issues and not Selection([], known_issues=False).known_issues
    pytester.makepyfile(
        test_demo="""
        def test_decode_step_broken():
            assert False
        """,
        conftest="""
        from gemma2_regress.plugins.strict_xfail import KnownIssue, mark_items
        ISSUES = [KnownIssue(id="x", summary="s", tests=("test_decode_step_broken",), affected="==1.0")]
        def pytest_collection_modifyitems(config, items):
            mark_items(items, ISSUES, "1.0")
        """,
    )
    args = ("-p", "no:cacheprovider", "-p", "no:xdist")
    pytester.runpytest_inprocess(*args).assert_outcomes(xfailed=1)
    monkeypatch.setenv(strict_xfail.IGNORE_ENV, "ignore")
    pytester.runpytest_inprocess(*args).assert_outcomes(failed=1)
    always = KnownIssue(id="y", summary="s", tests=("t",), affected="==1.0", trigger=lambda *_: True)
    strict_xfail.assume_not_known([always], "target", object(), "cpu", "1.0")  # returns: nothing left out
