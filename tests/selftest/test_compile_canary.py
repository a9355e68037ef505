"""gemma2_regress.plugins.compile_canary: a torch.compile that computes wrong results stops the run before
its first test, red, in one line that names torch; a right one lets the run go on."""

from __future__ import annotations

import pytest

from gemma2_regress import compile_check

PLUGIN = ("-p", "gemma2_regress.plugins.compile_canary", "-p", "no:cacheprovider")
TESTS = "def test_one():\n    pass\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_inner_suite=TESTS)
    return pytester


def test_a_wrong_compiler_stops_the_run_before_any_test(suite, monkeypatch):
    monkeypatch.setattr(compile_check, "_CANARY", "print('cpu 1.8e+38'); raise SystemExit(7)")
    result = suite.runpytest_inprocess(*PLUGIN)
    assert result.ret == 3
    result.assert_outcomes()  # nothing ran
    why = [s for s in result.outlines if "torch.compile computes wrong results" in s]
    assert len(why) == 1 and "x * 2 + 1 on cpu off by 1.8e+38" in why[0] and "--no-compile-canary" in why[0]


def test_a_right_compiler_lets_the_run_go_on(suite):
    result = suite.runpytest_inprocess(*PLUGIN)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert len([s for s in result.outlines if s.startswith("compile canary: the first test waited ")]) == 1


def test_the_child_inherits_the_vec_isa_decision(suite, monkeypatch):
    """The canary's child is started with plugins.vec_isa's ``child_env`` (so it skips Inductor's CPU
    probe where the run's process skips it), after that plugin's configure."""
    from gemma2_regress.plugins import vec_isa

    started = []
    monkeypatch.setattr(vec_isa, "child_env", lambda: {"CHILD_ENV_MARK": "1"})
    monkeypatch.setattr(compile_check, "start", lambda env=None: started.append(env) or _Done())
    result = suite.runpytest_inprocess(*PLUGIN)
    result.assert_outcomes(passed=1)
    assert started == [{"CHILD_ENV_MARK": "1"}]


class _Done:
    """A canary child that has already exited, right."""

    returncode = 0

    def communicate(self, timeout=None):
        return "", ""

    def poll(self):
        return 0


@pytest.mark.parametrize("flag", ["--no-compile-canary", "--collect-only", "env"])
def test_no_canary_where_not_wanted(suite, monkeypatch, flag):
    def refuse(*a, **k):
        raise AssertionError("the canary started")

    monkeypatch.setattr(compile_check, "start", refuse)
    if flag == "env":
        monkeypatch.setenv("GEMMA2_REGRESS_NO_COMPILE_CANARY", "1")
    result = suite.runpytest_inprocess(*PLUGIN, *([] if flag == "env" else [flag]))
    assert result.ret == pytest.ExitCode.OK
