"""The one pytest runner's reader (gemma2_regress.builds.runner): per-test outcomes and verdicts from a
run's summary JSON, as the suite's hook records them; what the bisect, the gate, the reruns and the
kill matrix all read. ``data/summary.json`` is written by hand in the hook's schema."""

from __future__ import annotations

import json
from pathlib import Path

from gemma2_regress.builds import runner
from gemma2_regress.builds.runner import Selection, classify, read_summary

FIXTURE = Path(__file__).with_name("data") / "summary.json"
GROUP = "tests/kernel/test_slow_kernel.py::test_small_windows[cuda-slow_inference_attention_softcapping[unsloth-eval]]"
CRASH = "crash:AttributeError@flex_attention.py:slow_inference_attention_softcapping"


def test_read_every_outcome() -> None:
    tests = read_summary(FIXTURE)
    assert tests is not None
    by = {t.nodeid: t for t in tests}
    assert [(t.outcome, t.plain, t.verdict) for t in tests] == [
        ("passed", "passed", "ok"),
        ("failed", "failed", CRASH),
        ("skipped", "skipped", "skipped"),
        ("xfailed", "skipped", "skipped"),
        ("xpassed", "passed", "ok"),
        ("error", "failed", "crash:UnslothUnavailable@device_type.py:<module>"),
    ]
    group = by[GROUP]
    assert group.module == "tests/kernel/test_slow_kernel.py" and group.duration_s == 41.7
    assert group.message == "AttributeError: 'NoneType' object has no attribute 'dim'"
    in_class = by["tests/trainer/test_evaluate.py::TestEvaluate::test_past_window[4]"]
    assert in_class.module == "tests/trainer/test_evaluate.py" and in_class.failed


def test_each_distinct_failure_keeps_its_verdict_and_counterexample() -> None:
    """A test where Hypothesis found a crash and a mismatch: bad for either pattern, each quoted."""
    group = {t.nodeid: t for t in read_summary(FIXTURE) or []}[GROUP]
    assert [f.verdict for f in group.failures] == [CRASH, "mismatch"]
    crash, mismatch = group.matching("crash:AttributeError"), group.matching("mismatch")
    assert crash is not None and "q_len=1" in (crash.example or "") and "\n" not in (crash.example or "")
    assert mismatch is not None and (mismatch.example_block or "").startswith("Failing test case: ")
    assert "Draw 1 (case): Case(" in (mismatch.example_block or "") and "q_len=2" in mismatch.example_block
    assert group.matching("nan") is None


def test_missing_or_broken_summary_is_none(tmp_path: Path) -> None:
    assert read_summary(tmp_path / "absent.json") is None
    (tmp_path / "cut.json").write_text('{"tests": {"a": ')
    assert read_summary(tmp_path / "cut.json") is None
    (tmp_path / "old.json").write_text('{"properties": []}')
    assert read_summary(tmp_path / "old.json") is None
    (tmp_path / "none.json").write_text('{"tests": {}}')
    assert read_summary(tmp_path / "none.json") == []  # ran, collected nothing: not the same as no file


def test_classify_from_the_summary() -> None:
    tests = read_summary(FIXTURE) or []
    status, reason, sig = classify(Selection(["x"], "mismatch"), 1, tests)
    assert (status, sig) == ("bad", "mismatch") and reason == f"1/6 tests mismatch: {GROUP}"
    assert classify(Selection(["x"]), 1, tests)[2] == CRASH  # any failure: the first one decides
    assert classify(Selection(["x"], "nan"), 1, tests)[0] == "good"  # no failure is a nan
    # every failure is "does not import": the build cannot be judged
    unusable = [t for t in tests if t.outcome == "error"]
    assert classify(Selection(["x"]), 1, unusable)[0] == "skip"
    deciding = runner.deciding_failure(Selection(["x"], "mismatch"), tests)
    assert deciding is not None and deciding.verdict == "mismatch"


def test_a_failed_test_without_verdicts_is_unjudged(tmp_path: Path) -> None:
    data = json.loads(FIXTURE.read_text())
    del data["tests"][GROUP]["verdicts"]
    (tmp_path / "summary.json").write_text(json.dumps(data))
    group = {t.nodeid: t for t in read_summary(tmp_path / "summary.json") or []}[GROUP]
    assert group.failed and group.verdict == "unjudged" and group.matching("mismatch") is None


def test_kill_matrix_rows_from_the_summary() -> None:
    from gemma2_regress.mutants import killmatrix

    rows = killmatrix.rows(read_summary(FIXTURE) or [])
    assert [r["outcome"] for r in rows] == ["passed", "failed", "skipped", "skipped", "passed", "failed"]
    bad = rows[1]
    assert bad["module"] == "tests/kernel/test_slow_kernel.py"
    assert bad["test"] == "test_small_windows[cuda-slow_inference_attention_softcapping[unsloth-eval]]"
    assert bad["verdict"] == CRASH and "q_len=1" in bad["counterexample"]
    assert [f["verdict"] for f in bad["failures"]] == [CRASH, "mismatch"]
    assert bad["failures"][1]["message"].startswith("AssertionError: kernel_matches_oracle failed")
    assert rows[5]["test"] == "TestEvaluate::test_past_window[4]"


def test_kill_matrix_runs_pytest_through_the_runner(tmp_path: Path, monkeypatch) -> None:
    """A baseline run of the kill matrix over a small real selection: the suite's own conftest writes
    the summary JSON the runner reads; a mutant named in the caller's environment is not planted
    (an unknown one would stop pytest with a usage error, exit 4). The selection's tests start no process of
    their own, so the run costs little beyond the child pytest's own start (docs/measured.md)."""
    import sys

    from gemma2_regress.mutants import killmatrix
    from gemma2_regress.plugins import compile_canary

    monkeypatch.setenv("GEMMA2_REGRESS_MUTANT", "no_such_bug")
    monkeypatch.setenv(compile_canary.OFF_ENV, "1")  # the canary has tests of its own; here ~5 s of compiling
    run = killmatrix.run_pytest(
        sys.executable, ("tests/selftest/test_known_issues.py",), "cpu", "", 0, None, 300.0, tmp_path
    )
    assert run.rc == 0 and run.status is None, run.output_tail
    assert run.tests and {t["outcome"] for t in run.tests} == {"passed"}
    assert {t["module"] for t in run.tests} == {"tests/selftest/test_known_issues.py"}
    assert run.command[run.command.index("-m", 3) + 1] == killmatrix.MARKERS["cpu"] and "-x" in run.command
    assert (tmp_path / "cpu-baseline" / "summary.json").exists()
