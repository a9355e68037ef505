"""``perf sensitivity`` (gemma2_regress.perf.sensitivity): the schedule, the state it resumes from, the
options it refuses to mix, its time budget and its table, on stand-in kernels that sleep (the real
kernel's planted slowdown is tested in test_perf.py and test_perf_run.py); and once end to end on the
real Unsloth kernel at the tiny shape, on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types

import pytest

from gemma2_regress import unsloth_adapter
from gemma2_regress.perf import bench, cli, grid, sensitivity, timing


@pytest.fixture
def fake(monkeypatch):
    """Stand-in implementations: ``unsloth`` calls the (patchable) kernel, which sleeps 3 ms (its output:
    2 q); ``sdpa``
    sleeps 1 ms. ``runs`` counts bench runs by label; ceilings are not measured (they cost seconds)."""

    def kernel(q, *rest):
        time.sleep(3e-3)
        return q * 2

    mod = types.SimpleNamespace(slow_attention_softcapping=kernel)
    monkeypatch.setattr(unsloth_adapter, "load", lambda: types.SimpleNamespace(kernels_module=mod))
    monkeypatch.setattr(timing, "matmul_ceiling", lambda device: {"what": "none", "tflops": 1.0})
    monkeypatch.setattr(timing, "copy_ceiling", lambda device: {"what": "none", "gbps": 1.0})
    runs: list[str] = []
    real_run = bench.run

    def counted(opts, prepare=None, log=bench.say):
        runs.append(opts.label)
        return real_run(opts, prepare=prepare, log=log)

    monkeypatch.setattr(bench, "run", counted)

    def prepare(name, cell, t):
        def call(mode):
            if name == "unsloth":
                mod.slow_attention_softcapping(t.q, t.k, t.v, None, None, cell.batch, cell.length)
            else:
                time.sleep(1e-3)

        return call

    return types.SimpleNamespace(prepare=prepare, runs=runs, kernels=mod)


def plan_for(tmp_path, **kw) -> sensitivity.Plan:
    cells = grid.select("smoke", "tiny", "sliding", "16", "1")
    run = bench.Options(
        cells=cells, impls=sensitivity.IMPLS, modes=("fwd",), repeats=5, warmup=1, device="cpu", out=None
    )
    kw.setdefault("sizes", (1.5,))
    kw.setdefault("runs", 2)
    return sensitivity.Plan(run=run, out=tmp_path / "sens", **kw)


def test_schedule_rotates_each_round(tmp_path):
    plan = plan_for(tmp_path, sizes=(1.1, 1.5), runs=3)
    got = [(r, sensitivity.label(s)) for r, s in sensitivity.schedule(plan)]
    assert got == [
        (1, "clean"), (1, "x1.1"), (1, "x1.5"),
        (2, "x1.1"), (2, "x1.5"), (2, "clean"),
        (3, "x1.5"), (3, "clean"), (3, "x1.1"),
    ]  # fmt: skip


def test_a_run_writes_state_and_table_and_resumes_without_remeasuring(tmp_path, fake):
    plan = plan_for(tmp_path)
    state = sensitivity.run(plan, prepare=fake.prepare, log=lambda s: None)
    assert fake.runs == [
        "warm-up",
        "baseline",
        "round 1 clean",
        "round 1 x1.5",
        "round 2 x1.5",
        "round 2 clean",
    ]
    assert state["complete"] and len(state["comparisons"]) == 4
    on_disk = json.loads((plan.out / sensitivity.STATE).read_text())
    assert on_disk["baseline"]["schema"] == bench.SCHEMA and on_disk["summary"]["clean"]["n"] == 2
    c = on_disk["comparisons"][1]
    assert (c["key"], c["size"], c["rows"][0]["stat"]) == ("1/x1.5", 1.5, "bootstrap")
    assert len(c["times_ms"]["tiny/sliding/n16/b1 fwd"]["unsloth"]) == 5
    md = (plan.out / sensitivity.TABLE).read_text()
    assert "| clean | false alarms " in md and "| planted x1.5 | detected " in md and "target (15 %" in md
    assert not list(plan.out.glob("*.tmp"))

    fake.runs.clear()  # the same plan again: nothing to measure, nothing compiled
    assert sensitivity.run(plan, prepare=fake.prepare, log=lambda s: None)["complete"]
    assert fake.runs == []
    fake.runs.clear()  # more rounds: only the new ones, against the stored baseline
    state = sensitivity.run(plan_for(tmp_path, runs=3), prepare=fake.prepare, log=lambda s: None)
    assert fake.runs == ["warm-up", "round 3 clean", "round 3 x1.5"]
    assert len(state["comparisons"]) == 6 and state["summary"]["x1.5"]["n"] == 3
    assert state["baseline"] == on_disk["baseline"]


def test_a_killed_run_resumes_where_it_stopped(tmp_path, fake):
    plan = plan_for(tmp_path)
    real = fake.kernels.slow_attention_softcapping
    calls = {"n": 0}

    def dies_in_the_third_candidate(*a):
        calls["n"] += 1
        if calls["n"] > 4 * 7:  # warm-up, baseline, two candidates: 7 calls each (first + 1 + 5)
            raise KeyboardInterrupt
        return real(*a)

    fake.kernels.slow_attention_softcapping = dies_in_the_third_candidate
    with pytest.raises(KeyboardInterrupt):
        sensitivity.run(plan, prepare=fake.prepare, log=lambda s: None)
    kept = json.loads((plan.out / sensitivity.STATE).read_text())
    assert [c["key"] for c in kept["comparisons"]] == ["1/clean", "1/x1.5"] and not kept["complete"]
    fake.kernels.slow_attention_softcapping = real
    fake.runs.clear()
    state = sensitivity.run(plan, prepare=fake.prepare, log=lambda s: None)
    assert fake.runs == ["warm-up", "round 2 x1.5", "round 2 clean"]
    assert state["complete"] and [c["key"] for c in state["comparisons"]][:2] == ["1/clean", "1/x1.5"]


def test_other_options_are_refused_before_anything_runs(tmp_path, fake, capsys, monkeypatch):
    plan = plan_for(tmp_path, runs=1)
    sensitivity.run(plan, prepare=fake.prepare, log=lambda s: None)
    with pytest.raises(ValueError, match=r"other options \(sizes \[1\.5\] -> \[1\.25\]\)") as e:
        sensitivity.load_state(plan_for(tmp_path, sizes=(1.25,)))
    assert "\n" not in str(e.value) and "another --out" in str(e.value)
    fake.runs.clear()
    before = (plan.out / sensitivity.STATE).read_text()
    rc = cli.main(["sensitivity", "--device", "cpu", "--out", str(plan.out), "--repeats", "7"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "repeats 5 -> 7" in err, err
    assert fake.runs == [] and (plan.out / sensitivity.STATE).read_text() == before
    (plan.out / sensitivity.STATE).write_text('{"schema": "something else"}')
    with pytest.raises(ValueError, match="not a sensitivity state"):
        sensitivity.load_state(plan)


def test_budget_stops_cleanly_and_keeps_what_it_has(tmp_path, fake, monkeypatch):
    """A fake clock: every bench run takes 10 s. Budget 35 s: warm-up (0-10), baseline (10-20), one
    candidate (20-30); the next would end at 40, so it is not started."""
    now = {"t": 0.0}
    monkeypatch.setattr(sensitivity.time, "monotonic", lambda: now["t"])
    counted = bench.run

    def ten_seconds(opts, prepare=None, log=bench.say):
        now["t"] += 10
        return counted(opts, prepare=prepare, log=log)

    monkeypatch.setattr(bench, "run", ten_seconds)
    plan = plan_for(tmp_path, budget_s=35)
    state = sensitivity.run(plan, prepare=fake.prepare, log=lambda s: None, started=0.0)
    assert fake.runs == ["warm-up", "baseline", "round 1 clean"]
    assert state["stopped"] == "time budget: 1 of 4 comparisons done" and not state["complete"]
    assert "STOPPED" in (plan.out / sensitivity.TABLE).read_text()
    now["t"] = 100.0  # the budget already spent at the start: nothing runs, nothing is lost
    fake.runs.clear()
    state = sensitivity.run(plan, prepare=fake.prepare, log=lambda s: None, started=0.0)
    assert fake.runs == [] and len(state["comparisons"]) == 1 and state["stopped"].startswith("time budget")


def test_summary_counts_alarms_and_the_target_line():
    def comp(label, alarm, ratio):
        rows = [{"cell": "c", "mode": "fwd", "verdict": "slower" if alarm else "ok", "time_ratio": ratio}]
        return {"label": label, "alarm": alarm, "failing": ["slower"] if alarm else [], "rows": rows}

    state = {
        "identity": {"sizes": [1.15]},
        "comparisons": [
            comp("clean", False, 1.0),
            comp("clean", True, 1.08),
            comp("x1.15", True, 1.15),
            comp("x1.15", True, 1.17),
        ],
    }
    s = sensitivity.summarize(state)
    assert (s["clean"]["n"], s["clean"]["alarms"], s["x1.15"]["alarms"]) == (2, 1, 2)
    assert s["x1.15"]["median_ratio"] == pytest.approx(1.16)
    assert "NOT met" in sensitivity.verdict_line(s) and "false alarms 1 of 2" in sensitivity.verdict_line(s)
    state["comparisons"].pop(1)
    assert ": met (x1.15 caught 2 of 2" in sensitivity.verdict_line(sensitivity.summarize(state))


@pytest.mark.unsloth
def test_sensitivity_end_to_end_on_the_real_kernel(tmp_path, capsys):
    out = tmp_path / "sens"
    argv = ["sensitivity", "--device", "cpu", "--lengths", "32", "--runs", "1", "--sizes", "1.5"]
    rc = cli.main([*argv, "--repeats", "5", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "sensitivity [2/2] round 1/1" in text and "| planted x1.5 | detected " in text
    state = json.loads((out / sensitivity.STATE).read_text())
    assert state["complete"] and state["unsloth"] == unsloth_adapter.load().version
    assert unsloth_adapter.load().softcapping_compiles("cpu")  # the compiled kernel was the one timed
    assert [c["new_graphs"] for c in state["comparisons"]] == [0, 0]  # the planted run recompiled nothing
    assert all(c["rows"][0]["stat"] == "bootstrap" for c in state["comparisons"])


def test_the_command_line_parses_without_torch():
    """nox checks ``perf run`` arguments in its own interpreter, which has no torch; the sensitivity
    command's defaults must not pull it in."""
    code = (
        "import sys; sys.modules.update(torch=None)\n"
        "from gemma2_regress.perf import cli\n"
        "cli.check_run_args(['--smoke'])\n"
        "a = cli._parser().parse_args(['sensitivity', '--sizes', '1.5,1.1'])\n"
        "assert a.sizes == (1.1, 1.5) and a.runs == 10, a\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
