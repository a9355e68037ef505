"""gemma2_regress.plugins.compile_canary: a torch.compile that computes wrong results stops the run before
its first test, red, in one line that names torch; a right one lets the run go on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gemma2_regress import compile_check
from gemma2_regress.plugins import compile_canary, vec_isa

PLUGIN = ("-p", "gemma2_regress.plugins.compile_canary", "-p", "no:cacheprovider")
TESTS = "def test_one():\n    pass\n"


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An inner suite of one test, with its own compile cache folder (where a passed canary is recorded), and
    the canary on whatever the outer run was told: `nox -s flakes` turns it off for the runs it makes."""
    pytester.makepyfile(test_inner_suite=TESTS)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(pytester.path / "compile-cache"))
    monkeypatch.delenv(compile_canary.OFF_ENV, raising=False)
    return pytester


def _records(suite: pytest.Pytester) -> list[Path]:
    return sorted((suite.path / "compile-cache" / compile_canary.FOLDER).glob("*.json"))


def _refuse(*a, **k):
    raise AssertionError("the canary started")


@pytest.mark.parametrize("aten", ["", "avx2"], ids=["as-is", "aten-avx2"])
def test_a_wrong_compiler_stops_the_run_before_any_test(suite, monkeypatch, aten):
    monkeypatch.setattr(compile_check, "_CANARY", "print('cpu 1.8e+38'); raise SystemExit(7)")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", aten)
    result = suite.runpytest_inprocess(*PLUGIN)
    assert result.ret == 3
    result.assert_outcomes()  # nothing ran
    why = [s for s in result.outlines if "torch.compile computes wrong results" in s]
    assert len(why) == 1 and "x * 2 + 1 on cpu off by 1.8e+38" in why[0] and "--no-compile-canary" in why[0]
    # under a setting of ATen's capability, the likelier cause: a cache shared with runs without it
    assert ("a TORCHINDUCTOR_CACHE_DIR of its own" in why[0]) == bool(aten), why[0]
    assert _records(suite) == []  # and the next run asks again


def test_a_right_compiler_lets_the_run_go_on(suite, monkeypatch, request):
    # The real child, a cold Inductor compile of its own, handed this run's vec-ISA record as the tier's
    # canary is (plugins.vec_isa), so it does not probe the CPU's ISAs again.
    record = request.config.stash.get(vec_isa.RECORD, None)
    if record:
        monkeypatch.setattr(vec_isa, "child_env", lambda config: {vec_isa.RECORD_ENV: record})
    result = suite.runpytest_inprocess(*PLUGIN)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert len([s for s in result.outlines if s.startswith("compile canary: the first test waited ")]) == 1


def _passes(env=None, base=None) -> _Done:
    """A canary child that passed at once: the real child, a cold Inductor compile of its own, runs in
    ``test_a_right_compiler_lets_the_run_go_on``."""
    return _Done()


def test_a_pass_is_recorded_and_not_run_again_under_the_same_key(suite, monkeypatch):
    monkeypatch.setattr(compile_check, "start", _passes)
    suite.runpytest_inprocess(*PLUGIN).assert_outcomes(passed=1)
    (record,) = _records(suite)
    assert json.loads(record.read_text())["key"] == compile_canary.canary_key()
    monkeypatch.setattr(compile_check, "start", _refuse)
    again = suite.runpytest_inprocess(*PLUGIN)
    again.assert_outcomes(passed=1)
    assert [s for s in again.outlines if s.startswith("compile canary: ")] == [
        f"compile canary: passed here before with the same key, not run again ({record})"
    ]


def test_a_conftest_that_sets_torch_variables_at_configure_shares_the_record(suite, monkeypatch):
    """Naming tests/model on the command line configures its conftest before this plugin, and that imports
    Unsloth, which sets TORCHINDUCTOR_* and others (on the H200 the canary then ran again, 42.3 s). The key
    and the child's environment are those the run started with: the record of a run without that conftest
    is found."""
    monkeypatch.delenv("TORCHINDUCTOR_FREEZING", raising=False)
    monkeypatch.setattr(compile_check, "start", _passes)
    suite.runpytest_inprocess(*PLUGIN).assert_outcomes(passed=1)
    (record,) = _records(suite)
    suite.makeconftest(
        "import os\n\ndef pytest_configure(config):\n    os.environ['TORCHINDUCTOR_FREEZING'] = '1'\n"
    )
    monkeypatch.setattr(compile_check, "start", _refuse)
    try:
        again = suite.runpytest_inprocess(*PLUGIN)
    finally:
        os.environ.pop("TORCHINDUCTOR_FREEZING", None)
    again.assert_outcomes(passed=1)
    assert f"compile canary: passed here before with the same key, not run again ({record})" in again.outlines
    # A new cache folder: the child starts, in the environment the run started with.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(suite.path / "another-cache"))
    bases = []
    monkeypatch.setattr(
        compile_check, "start", lambda env=None, base=None: bases.append(dict(base)) or _Done()
    )
    try:
        suite.runpytest_inprocess(*PLUGIN).assert_outcomes(passed=1)
    finally:
        os.environ.pop("TORCHINDUCTOR_FREEZING", None)
    assert len(bases) == 1 and "TORCHINDUCTOR_FREEZING" not in bases[0]


@pytest.mark.parametrize("setting", ["ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_FREEZING", "OMP_NUM_THREADS"])
def test_another_setting_runs_it_again(suite, monkeypatch, setting):
    started = []
    monkeypatch.setattr(compile_check, "start", lambda env=None, base=None: started.append(env) or _Done())
    monkeypatch.delenv(setting, raising=False)
    for _ in range(2):
        suite.runpytest_inprocess(*PLUGIN).assert_outcomes(passed=1)
    assert len(started) == 1
    monkeypatch.setenv(setting, "default" if setting.startswith("ATEN") else "1")
    suite.runpytest_inprocess(*PLUGIN).assert_outcomes(passed=1)
    assert len(started) == 2 and len(_records(suite)) == 2


def test_the_child_is_handed_the_vec_isa_record(suite, monkeypatch):
    """The canary's child is started with plugins.vec_isa's ``child_env`` (so it replays Inductor's CPU
    probe where the run's process skips it), after that plugin's configure."""
    from gemma2_regress.plugins import vec_isa

    started = []
    monkeypatch.setattr(vec_isa, "child_env", lambda config: {"CHILD_ENV_MARK": "1"})
    monkeypatch.setattr(compile_check, "start", lambda env=None, base=None: started.append(env) or _Done())
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
    monkeypatch.setattr(compile_check, "start", _refuse)
    if flag == "env":
        monkeypatch.setenv("GEMMA2_REGRESS_NO_COMPILE_CANARY", "1")
    result = suite.runpytest_inprocess(*PLUGIN, *([] if flag == "env" else [flag]))
    assert result.ret == pytest.ExitCode.OK
