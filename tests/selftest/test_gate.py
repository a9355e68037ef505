"""Self-tests of the release gate with fake builds (no network): a regression fails it, a fix or
an unchanged build passes it, and the verdict table, gate.json and the JUnit file say why."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from test_bisect import fakes  # noqa: F401 - the shared wheelhouse fixture

from gemma2_regress import cli
from gemma2_regress.builds import envs, gate, runner
from gemma2_regress.builds.runner import Failure, Outcome

RUNS: dict[tuple, object] = {}


@pytest.fixture(autouse=True)
def _quiet_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    real = runner.run

    def memo_run(env, sel, step_dir, **kw):  # a fake build's run is deterministic: run it once per session
        key = (tuple(env.pythonpath), tuple(sel.pytest_args))
        if key not in RUNS:
            RUNS[key] = real(env, sel, step_dir, **kw)
        return RUNS[key]

    monkeypatch.setattr(runner, "run", memo_run)


def _gate(fakes, tmp_path, candidate: str, baseline: str = "1.0") -> dict:  # noqa: F811
    house = fakes["house"]
    return gate.gate(
        str(house / f"unsloth-{candidate}-py3-none-any.whl"),
        str(house / f"unsloth-{baseline}-py3-none-any.whl"),
        out=tmp_path / "gate",
        cache=envs.EnvCache(fakes["cache"], 2**30),
        cwd=fakes["proj"],
        pytest_args=["-p", "hypothesis", "test_fake.py"],
        tiers=["cpu"],
        log=lambda s: None,
    )


def test_regression_fails_the_gate(fakes, tmp_path):  # noqa: F811
    res = _gate(fakes, tmp_path, "1.7")
    assert not res["pass"]
    assert [r["test"] for r in res["regressions"]] == ["test_fake.py::test_attention"]
    assert res["regressions"][0]["candidate"].startswith("crash:TypeError")
    assert res["perf"]["status"] == "not run"
    suite = ET.parse(tmp_path / "gate" / "gate-junit.xml").getroot()
    assert suite.get("failures") == "1" and suite.get("tests") == "2"
    assert json.loads((tmp_path / "gate" / "gate.json").read_text())["pass"] is False
    assert "gate FAIL" in gate.render(res) and "REGRESSION test_fake.py::test_attention" in gate.render(res)


def test_fix_and_same_build_pass(fakes, tmp_path):  # noqa: F811
    assert _gate(fakes, tmp_path / "a", "2.0", baseline="1.8")["pass"]  # fixed: ok
    res = _gate(fakes, tmp_path / "b", "1.1")
    assert res["pass"] and "gate PASS" in gate.render(res)


def test_unusable_candidate_fails_the_gate(fakes, tmp_path):  # noqa: F811
    res = _gate(fakes, tmp_path, "1.5")  # does not import: every test "fails"; a gate must not pass it
    assert not res["pass"]


def _test(nodeid: str, verdict: str) -> Outcome:
    if verdict == "ok":
        return Outcome(nodeid, "passed")
    return Outcome(nodeid, "failed", (Failure(verdict, f"{verdict} in {nodeid}"),))


def test_compare_tier_calls():
    base = [_test("a", "ok"), _test("b", "mismatch"), _test("c", "ok"), _test("d", "nan"), _test("g", "ok")]
    cand = [
        _test("a", "crash:TypeError@x.py:f"),
        _test("b", "ok"),
        _test("c", "ok"),
        _test("d", "nan"),
        _test("n", "mismatch"),
    ]
    calls = {r["test"]: r["call"] for r in gate.compare_tier(base, cand)}
    assert calls == {
        "a": "regression",
        "b": "fixed",
        "c": "ok",
        "d": "both-fail",
        "g": "gone",
        "n": "new-fail",
    }


def test_cli_gate_help_and_exit(fakes, tmp_path, monkeypatch, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        cli.main(["gate", "--help"])
    assert e.value.code == 0 and "--candidate" in capsys.readouterr().out
    monkeypatch.chdir(fakes["proj"])
    house = fakes["house"]
    argv = [
        "gate",
        "--candidate",
        str(house / "unsloth-1.9-py3-none-any.whl"),
        "--baseline",
        str(house / "unsloth-1.2-py3-none-any.whl"),
        "--tiers",
        "cpu",
        "--cache",
        str(fakes["cache"]),
        "--out",
        str(tmp_path / "g"),
        "--",
        "-p",
        "hypothesis",
        "test_fake.py",
    ]
    assert cli.main(argv) == 1


def test_gpus_are_asked_of_the_env_only_where_a_driver_is(monkeypatch):
    """Without a usable NVIDIA driver the gate counts no GPU and starts no Python; with one, the count is
    what the side's torch sees."""
    from gemma2_regress import gpu_check

    asked = []
    monkeypatch.setattr(gpu_check, "cuda_device_count", lambda python, env: asked.append(python) or 2)
    monkeypatch.setattr(gpu_check, "driver_problem", lambda: "no `nvidia-smi` on PATH")
    assert gate.cuda_devices(envs.Env(python="/side/bin/python")) == 0 and asked == []
    monkeypatch.setattr(gpu_check, "driver_problem", lambda: None)
    assert gate.cuda_devices(envs.Env(python="/side/bin/python")) == 2 and asked == ["/side/bin/python"]
