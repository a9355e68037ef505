"""The nightly loop with its gate, test runner and bisect injected: which failures are stable, which
flaky, what is bisected, what the issue text says, the exit status. No network, no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma2_regress.builds import envs, nightly
from gemma2_regress.builds.runner import Outcome, RunResult

T1, T2 = "tests/kernel/test_k.py::test_window[cpu]", "tests/kernel/test_k.py::test_cap[cpu]"
SHA = "2827fbebbdaa66d43b82667f38a995d882a4d09b"


def fake_gate(rows: list[dict], passed: bool):
    def gate(candidate: str, baseline: str, **_kw) -> dict:
        return {
            "candidate": candidate if candidate != "main" else f"main ({SHA[:12]})",  # labels, for people
            "baseline": baseline,
            "candidate_ref": SHA if candidate == "main" else candidate,  # what a bisect takes
            "baseline_ref": baseline,
            "pass": passed,
            "why": "no regression"
            if passed
            else f"{len(rows)} test(s) pass on the baseline and fail on the candidate",
            "tiers": {"cpu": {"rows": rows}},
        }

    return gate


def fake_runs(fail_pattern: dict[str, list[bool]]):
    """A runner whose k-th run fails the tests marked True at index k."""
    calls: list[list[str]] = []

    def run(env, sel, step_dir: Path, **_kw) -> RunResult:
        k = len(calls)
        nodes = [a for a in sel.pytest_args if "::" in a]
        calls.append(nodes)
        tests = [Outcome(n, "failed" if fail_pattern[n][k] else "passed") for n in nodes]
        return RunResult("bad", "", "mismatch", tests, 1.0, 1)

    run.calls = calls  # type: ignore[attr-defined]
    return run


@pytest.fixture
def loop(tmp_path, monkeypatch):
    monkeypatch.setattr(nightly, "_candidate_env", lambda *a: envs.Env("python", [], {}))
    monkeypatch.setattr(nightly, "bisectable", lambda *a: None)

    def go(rows, passed, pattern, bisect_fn=None, candidate="2026.10.9", repo=None):
        run = fake_runs(pattern)
        res = nightly.nightly(
            candidate,
            "2026.10.1",
            repo=repo,
            out=tmp_path / "n",
            cache=envs.EnvCache(tmp_path / "cache"),
            cwd=tmp_path,
            pytest_args=["tests"],
            reruns=3,
            gate_fn=fake_gate(rows, passed),
            run_fn=run,
            bisect_fn=bisect_fn,
            log=lambda s: None,
        )
        return res, run.calls

    return go


def regression(node: str, verdict: str) -> dict:
    return {"test": node, "baseline": "ok", "candidate": verdict, "call": "regression", "message": ""}


def test_stable_failures_are_bisected_and_flaky_ones_are_not(loop, tmp_path) -> None:
    seen: list[list[str]] = []

    def bisect(argv: list[str]) -> int:
        seen.append(argv)
        (tmp_path / "n" / "bisect").mkdir(parents=True)
        (tmp_path / "n" / "bisect" / "result.md").write_text("### Regression in unsloth 2026.10.4\n")
        return 0

    rows = [regression(T1, "mismatch"), regression(T2, "crash:TypeError@flex_attention.py:f")]
    res, calls = loop(rows, False, {T1: [True, True, True], T2: [True, False, True]}, bisect)
    assert [e["test"] for e in res["stable"]] == [T1] and [e["test"] for e in res["flaky"]] == [T2]
    assert len(calls) == 3 and all(set(c) == {T1, T2} for c in calls)
    (argv,) = seen
    assert argv[argv.index("--signature") + 1] == "mismatch" and argv[argv.index("--") + 1 :] == [T1]
    assert argv[argv.index("--good") + 1] == "2026.10.1" and argv[argv.index("--bad") + 1] == "2026.10.9"
    assert res["bisect"]["status"] == "found" and res["exit"] == nightly.EXIT_STABLE
    md = (tmp_path / "n" / "nightly.md").read_text()
    assert "Stable failures" in md and "Flaky" in md and "### Regression in unsloth 2026.10.4" in md
    assert (tmp_path / "n" / "nightly.json").exists()


def test_a_passing_gate_ends_the_night(loop) -> None:
    res, calls = loop([], True, {})
    assert res["exit"] == nightly.EXIT_PASS and calls == [] and res["stable"] == res["flaky"] == []


def test_only_flaky_failures_are_not_bisected(loop) -> None:
    def never(argv: list[str]) -> int:
        raise AssertionError("a flaky failure must not be bisected")

    res, _ = loop([regression(T1, "nan")], False, {T1: [False, True, True]}, never)
    assert res["exit"] == nightly.EXIT_FLAKY and res["bisect"] is None and res["flaky"][0]["failed"] == 2


def test_signature_is_the_verdict_kind() -> None:
    assert nightly._signature("crash:TypeError@flex_attention.py:f") == "crash:TypeError"
    assert nightly._signature("mismatch") == "mismatch" and nightly._signature(None) == "bad"


def test_a_git_candidate_is_bisected_over_the_baselines_environment(loop, tmp_path) -> None:
    """The commits of --repo are laid over the baseline release's environment, as the gate laid the candidate."""
    seen: list[list[str]] = []
    rows = [regression(T1, "mismatch")]
    loop(rows, False, {T1: [True] * 3}, lambda argv: seen.append(argv) or 0, candidate="main", repo="/u")
    (argv,) = seen
    assert argv[argv.index("--repo") + 1] == "/u" and argv[argv.index("--base") + 1] == "2026.10.1"
    assert (
        argv[argv.index("--good") + 1] == "2026.10.1" and argv[argv.index("--bad") + 1] == SHA
    )  # not the label
