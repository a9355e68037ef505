"""The suite-cost plugin (gemma2_regress.plugins.costs): per-example times, first-call grouping, summary."""

from __future__ import annotations

import json

from gemma2_regress.plugins import costs

pytest_plugins = ["pytester"]


def test_summarize_separates_first_example_per_process():
    recs = [
        {"tier": "cpu", "target": "k[a]", "examples_s": [8.0, 0.01, 0.03], "worker": "gw0"},
        {"tier": "cpu", "target": "k[a]", "examples_s": [0.02, 0.02], "worker": "gw0"},
        {"tier": "cpu", "target": "k[a]", "examples_s": [5.0, 0.02], "worker": "gw1"},
        {"tier": "cuda", "target": "k[a]", "examples_s": [16.0]},
    ]
    rows = {(r["tier"], r["target"]): r for r in costs.summarize(recs)}
    cpu = rows[("cpu", "k[a]")]
    assert (cpu["tests"], cpu["examples"], cpu["first_s"]) == (3, 7, 8.0)  # the larger worker's first call
    assert cpu["ms_per_example"] == 20.0  # median of the 5 non-first examples
    assert rows[("cuda", "k[a]")]["ms_per_example"] is None and rows[("cuda", "k[a]")]["first_s"] == 16.0


def test_start_line_takes_each_process_first_call():
    recs = [
        {"start_s": 40.0, "worker": "gw0"},
        {"start_s": 90.0, "worker": "gw0"},  # a later test on gw0: not its start
        {"start_s": 70.5, "worker": "gw1"},
        {"worker": "gw2"},  # an older record without it
    ]
    assert costs.start_line(recs) == (
        "from configure to the first test call: 40.0 to 70.5 s over 2 processes "
        "(collection, conftest set-up, first fixtures)"
    )
    assert costs.start_line([{"start_s": 3.25}]).startswith("from configure to the first test call: 3.2 s (")
    assert costs.start_line([{"worker": "gw0"}]) is None


def test_misses_line_names_the_costliest_misses_first():
    def rec(test, miss, inductor):
        return {"test": test, "compile": {"fxgraph_miss": miss, "inductor_s": inductor}}

    recs = [
        rec("tests/a.py::test_hit", 0, 9.0),  # a hit, however slow, is not a miss
        rec("tests/trainer/test_evaluate.py::test_e[SFT-1]", 1, 12.6),
        rec("tests/b.py::test_b", 2, 18.3),
        {"test": "tests/c.py::test_old"},  # an older record without compile counters
    ]
    assert costs.misses_line(recs) == (
        "FX-graph cache misses in 2 test(s): b.py::test_b (2, Inductor 18.3 s), "
        "test_evaluate.py::test_e[SFT-1] (1, Inductor 12.6 s)"
    )
    assert costs.misses_line(recs, n=1).endswith("b.py::test_b (2, Inductor 18.3 s), and 1 more")
    assert costs.misses_line(recs[:1]) is None


def test_plugin_times_each_hypothesis_example(pytester, monkeypatch):
    pytester.makepyfile(
        """
        import time

        import pytest
        from hypothesis import given, settings, strategies as st

        @pytest.mark.parametrize("device", ["cpu"])
        @settings(max_examples=7, database=None, derandomize=True)
        @given(x=st.integers())
        def test_h(device, x):
            pass

        def test_plain():
            time.sleep(0.02)  # the JSON rounds seconds to 0.01: two empty tests summed to 0.0
        """
    )
    out = pytester.path / "costs.json"
    monkeypatch.setenv("GEMMA2_REGRESS_COSTS", str(out))
    result = pytester.runpytest_inprocess(
        "-p", "gemma2_regress.plugins.costs", "-p", "no:cacheprovider", "-q"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*suite cost per tier/target*", "*cpu*(test_plugin_times_each_hypothesis_example)*"]
    )
    data = json.loads(out.read_text())
    by_test = {t["test"].split("::")[-1]: t for t in data["tests"]}
    assert by_test["test_h[cpu]"]["hypothesis"] and len(by_test["test_h[cpu]"]["examples_s"]) == 7
    assert not by_test["test_plain"]["hypothesis"] and len(by_test["test_plain"]["examples_s"]) == 1
    assert data["compile"]["tests_s"] > 0 and data["compile"]["graphs"] == 0  # nothing compiled here
    result.stdout.fnmatch_lines(
        [
            "compile / run split over every worker: test calls * s, of which torch.compile 0.0 s*",
            "from configure to the first test call: * s (collection, conftest set-up, first fixtures)",
        ]
    )
    starts = [by_test[n]["start_s"] for n in ("test_h[cpu]", "test_plain")]
    assert 0 < starts[0] < starts[1]  # in run order, from configure


def test_compile_split_counts_what_torch_compile_did_in_a_test(pytester, monkeypatch):
    """A test that compiles a graph shows up in the split (Dynamo's own timers; the eager backend keeps
    it fast) and one that only reruns it does not."""
    pytester.makepyfile(
        """
        import torch

        f = torch.compile(lambda x: x * 2 + 1, backend="eager")

        def test_a_compile():
            f(torch.ones(3))

        def test_b_rerun():
            f(torch.ones(3))
        """
    )
    out = pytester.path / "costs.json"
    monkeypatch.setenv("GEMMA2_REGRESS_COSTS", str(out))
    result = pytester.runpytest_inprocess(
        "-p", "gemma2_regress.plugins.costs", "-p", "no:cacheprovider", "-q"
    )
    result.assert_outcomes(passed=2)
    data = json.loads(out.read_text())
    by_test = {t["test"].split("::")[-1]: t["compile"] for t in data["tests"]}
    assert by_test["test_a_compile"]["graphs"] == 1 and by_test["test_a_compile"]["compile_s"] > 0
    assert by_test["test_b_rerun"]["graphs"] == 0 and by_test["test_b_rerun"]["compile_s"] == 0
    assert data["compile"]["graphs"] == 1
    # the eager backend: Dynamo traced, Inductor never ran
    assert 0 < by_test["test_a_compile"]["trace_s"] <= by_test["test_a_compile"]["compile_s"]
    assert data["compile"]["inductor_s"] == 0 and by_test["test_b_rerun"]["trace_s"] == 0
    result.stdout.fnmatch_lines(
        ["*of which torch.compile * s (*%) in 1 graphs (Dynamo tracing *, Inductor 0.0 s*"]
    )


def test_top_timers_keep_the_largest_growths_above_half_a_second() -> None:
    from gemma2_regress.plugins.costs import top_timers

    before = {"bytecode_tracing": 1.0, "compile_fx_inner": 2.0, "build_guards": 0.1}
    after = {"bytecode_tracing": 4.0, "compile_fx_inner": 2.4, "build_guards": 0.2, "inductor_load": 9.0}
    assert top_timers(before, after) == {"inductor_load": 9.0, "bytecode_tracing": 3.0}
    assert list(top_timers(before, after, n=1)) == ["inductor_load"]
