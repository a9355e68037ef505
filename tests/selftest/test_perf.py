"""The perf benchmark's own logic on CPU: grid, FLOPs, the run loop (OOM, errors, inference,
budget), the JSON, the gate's thresholds and the CLI. Fake implementations stand in only where the
*runner's* logic is under test; the implementations themselves run for real in test_perf_run.py."""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from gemma2_regress.perf import bench, cli, gatecheck, grid, impls
from gemma2_regress.perf.grid import Cell
from gemma2_regress.reference import masks


# --- grid and FLOPs ---------------------------------------------------------------------------
def test_model_shapes_are_googles_configs():
    assert (grid.MODELS["2b"].n_heads, grid.MODELS["2b"].n_kv_heads) == (8, 4)
    assert (grid.MODELS["9b"].n_heads, grid.MODELS["9b"].n_kv_heads) == (16, 8)
    for m in ("2b", "9b"):
        s = grid.MODELS[m]
        assert (s.head_dim, s.scalar, s.softcap, s.window) == (256, 256.0, 50.0, 4096)


def test_quick_grid_covers_the_window_boundary_both_models_and_layers():
    cells = grid.select("quick")
    lengths = {c.length for c in cells}
    assert {1024, 4095, 4096, 4097, 8192, 32768} <= lengths
    assert {c.model for c in cells} == {"2b", "9b"}
    assert {c.layer for c in cells} == {"sliding", "global"}
    assert {c.batch for c in cells} == {1, 8}
    assert len({c.key for c in cells}) == len(cells)
    full = grid.select("full")
    assert {c.batch for c in full} == {1, 2, 4, 8} and len(full) == 2 * 8 * 4 * 2


def test_oom_is_recognised_when_wrapped():
    from gemma2_regress.perf import timing

    assert timing.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert timing.is_oom(Exception("InductorError: RuntimeError: CUDA error: out of memory"))
    assert not timing.is_oom(TypeError("'bool' object is not subscriptable"))


def test_explicit_lists_replace_the_preset():
    cells = grid.select("quick", models="9b", lengths="4095..4097", batches="2", layers="sliding")
    assert [(c.model, c.length, c.batch, c.layer) for c in cells] == [
        ("9b", 4095, 2, "sliding"),
        ("9b", 4096, 2, "sliding"),
        ("9b", 4097, 2, "sliding"),
    ]


@pytest.mark.parametrize(
    "text, want",
    [
        ("1024", (1024,)),
        ("1,2, 4,8", (1, 2, 4, 8)),
        ("4095..4097,8192", (4095, 4096, 4097, 8192)),
        ("2,2", (2,)),
    ],
)
def test_parse_ints(text, want):
    assert grid.parse_ints(text, "lengths") == want


@pytest.mark.parametrize("text", ["abc", "4097..4095", "0", "", "1,-2", "1..x"])
def test_parse_ints_rejects_with_a_one_line_hint(text):
    with pytest.raises(ValueError, match="--lengths") as e:
        grid.parse_ints(text, "lengths")
    assert "\n" not in str(e.value)


def test_parse_names_rejects_unknown():
    with pytest.raises(ValueError, match="choose from 2b, 9b, tiny"):
        grid.parse_names("2b,27b", list(grid.MODELS), "models")
    with pytest.raises(ValueError, match="--quick, --full, --walls or --smoke"):
        grid.select("huge")


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 70])
@pytest.mark.parametrize("window", [None, 1, 8, 32])
def test_visible_pairs_counts_what_the_mask_allows(n, window):
    assert grid.visible_pairs(n, window) == int(masks.allowed(n, n, window).sum())


def test_flops_formula():
    cell = Cell("9b", "global", 8192, 2)
    fwd = 4 * 2 * 16 * 256 * (8192 * 8193 // 2)
    assert grid.flops(cell, "fwd") == fwd
    assert grid.flops(cell, "fwdbwd") == 3 * fwd
    sliding = Cell("9b", "sliding", 8192, 2)
    assert grid.flops(sliding, "fwd") == 4 * 2 * 16 * 256 * (4096 * 4097 // 2 + 4096 * 4096)
    assert grid.flops(Cell("2b", "sliding", 4096, 1), "fwd") == grid.flops(
        Cell("2b", "global", 4096, 1), "fwd"
    )
    assert grid.score_matrix_bytes(Cell("2b", "global", 32768, 1)) == 8 * 32768**2 * 2
    with pytest.raises(ValueError, match="unknown mode"):
        grid.flops(cell, "bwd")


# --- the run loop with fake implementations ---------------------------------------------------
def fake_prepare(oom_from: int = 10**9, error_impl: str | None = None, calls: list | None = None):
    """Implementations that sleep a little (unsloth 3 ms, flex 1 ms, sdpa 0.5 ms); unsloth runs out of
    memory from a length on; one implementation may raise."""

    def prepare(name, cell, t):
        def call(mode):
            if calls is not None:
                calls.append((name, cell.key, mode))
            if name == "unsloth" and cell.length >= oom_from:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
            if name == error_impl:
                raise TypeError("'bool' object is not subscriptable")
            time.sleep({"unsloth": 3e-3, "flex": 1e-3, "sdpa": 5e-4}[name])

        return call

    return prepare


def tiny_opts(tmp_path, **kw):
    cells = grid.select(
        "smoke",
        lengths=kw.pop("lengths", "16,32,64"),
        batches=kw.pop("batches", "1,2"),
        layers=kw.pop("layers", None),
    )
    return bench.Options(cells=cells, **{"repeats": 3, "warmup": 1, "device": "cpu", "out": tmp_path, **kw})


def test_run_records_oom_infers_bigger_cells_and_goes_on(tmp_path):
    calls: list = []
    payload = bench.run(
        tiny_opts(tmp_path), prepare=fake_prepare(oom_from=32, calls=calls), log=lambda s: None
    )
    by = {c["key"]: c["results"] for c in payload["cells"]}
    assert by["tiny/sliding/n16/b1"]["unsloth"]["fwd"]["status"] == "ok"
    measured = by["tiny/sliding/n32/b1"]["unsloth"]
    assert measured["fwd"]["status"] == "oom" and not measured["fwd"].get("inferred_from")
    assert measured["fwdbwd"]["inferred_from"] == "tiny/sliding/n32/b1:fwd"  # fwd OOM implies fwd+bwd OOM
    inferred = by["tiny/sliding/n64/b2"]["unsloth"]["fwd"]
    assert inferred == {"status": "oom", "inferred_from": "tiny/sliding/n32/b1:fwd"}
    assert not any(c[0] == "unsloth" and c[1] == "tiny/sliding/n64/b2" for c in calls)  # not tried
    assert by["tiny/sliding/n64/b2"]["flex"]["fwd"]["status"] == "ok"  # the others went on
    assert payload["complete"] is True


def test_run_records_errors_per_implementation(tmp_path):
    payload = bench.run(
        tiny_opts(tmp_path, lengths="16", batches="1"),
        prepare=fake_prepare(error_impl="flex"),
        log=lambda s: None,
    )
    r = payload["cells"][0]["results"]
    assert r["flex"]["fwd"]["status"].startswith("error:TypeError")
    assert "not subscriptable" in r["flex"]["fwd"]["status"]
    assert r["unsloth"]["fwd"]["status"] == "ok" and r["sdpa"]["fwdbwd"]["status"] == "ok"


def test_impls_take_turns_within_each_repeat(tmp_path):
    calls: list = []
    bench.run(
        tiny_opts(tmp_path, lengths="16", batches="1", layers="global", modes=("fwd",)),
        prepare=fake_prepare(calls=calls),
        log=lambda s: None,
    )
    names = [c[0] for c in calls]
    assert names[:3] == ["unsloth", "flex", "sdpa"]  # first calls
    timed = names[3:]
    assert len(timed) == 9 and timed[0:3] != timed[3:6]  # rotated: no implementation always goes first
    assert all(sorted(timed[i : i + 3]) == ["flex", "sdpa", "unsloth"] for i in range(0, 9, 3))


def test_json_schema_ratios_and_atomic_file(tmp_path):
    payload = bench.run(
        tiny_opts(tmp_path, lengths="16,32", batches="1"), prepare=fake_prepare(), log=lambda s: None
    )
    on_disk = json.loads((tmp_path / "perf.json").read_text())
    assert on_disk["schema"] == bench.SCHEMA and on_disk["complete"]
    assert not list(tmp_path.glob("*.tmp"))
    for key in (
        "versions",
        "device",
        "timer",
        "options",
        "ceiling",
        "cells",
        "first_calls_ms",
        "flop_formula",
    ):
        assert key in on_disk, key
    assert on_disk["timer"] == "wall-clock" and on_disk["ceiling"]["matmul"]["tflops"] > 0
    cell = payload["cells"][0]
    assert {"key", "model", "layer", "window", "length", "batch", "heads", "kv_heads", "flops"} <= set(cell)
    for mode in ("fwd", "fwdbwd"):
        rs = {i: cell["results"][i][mode] for i in impls.IMPLS}
        assert all(
            r["status"] == "ok" and len(r["times_ms"]) == 3 and r["median_ms"] > 0 for r in rs.values()
        )
        assert min(r["x_best"] for r in rs.values()) == pytest.approx(1.0)
        assert rs["sdpa"]["x_best_softcap"] is None
        assert min(rs["unsloth"]["x_best_softcap"], rs["flex"]["x_best_softcap"]) == pytest.approx(1.0)
        assert rs["unsloth"]["tflops"] == pytest.approx(
            grid.flops(Cell("tiny", cell["layer"], 16, 1), mode) / (rs["unsloth"]["median_ms"] * 1e-3) / 1e12
        )
        assert rs["unsloth"]["peak_mib"] is None  # no memory figure without CUDA


def test_nonfinite_output_is_flagged_in_json_and_table(tmp_path):
    from gemma2_regress.perf import table

    base = fake_prepare()

    def prepare(name, cell, t):
        call = base(name, cell, t)
        call.finite = lambda: name != "unsloth"
        return call

    payload = bench.run(
        tiny_opts(tmp_path, lengths="16", batches="1", layers="global"), prepare=prepare, log=lambda s: None
    )
    res = payload["cells"][0]["results"]
    assert res["unsloth"]["finite"] is False and res["flex"]["finite"] is True
    lines = table.rows(payload["cells"][0], impls.IMPLS, grid.MODES)
    assert all("NaN!" in line.split("|")[1] and "NaN!" not in line.split("|")[2] for line in lines)


def test_walls_grid_has_training_batches_past_the_window_and_a_length_ladder():
    cells = grid.select("walls")
    batched = {(c.length, c.batch) for c in cells if c.batch > 1}
    assert batched == {(n, b) for n in (4096, 8192, 16384) for b in (2, 4, 8)}
    assert {c.length for c in cells if c.batch == 1} == set(grid.LADDER)
    assert {"9b/sliding/n32768/b1", "9b/global/n32768/b1"} <= {c.key for c in cells}


def test_resume_keeps_measured_cells_and_measures_only_the_rest(tmp_path):
    calls: list = []
    first = bench.run(
        tiny_opts(tmp_path, lengths="16,32", batches="1"),
        prepare=fake_prepare(oom_from=32, calls=calls),
        log=lambda s: None,
    )
    assert first["complete"] and len(first["processes"]) == 1
    calls.clear()
    lines: list[str] = []
    again = bench.run(
        tiny_opts(tmp_path, lengths="16,32,64", batches="1", resume=True),
        prepare=fake_prepare(oom_from=32, calls=calls),
        log=lines.append,
    )
    assert {key for _, key, _ in calls} == {"tiny/sliding/n64/b1", "tiny/global/n64/b1"}
    assert not any(name == "unsloth" for name, _, _ in calls)  # its OOM at 32, measured before, still infers
    by = {c["key"]: c for c in again["cells"]}
    assert [c["key"] for c in again["cells"]] == [
        c.key for c in grid.select("smoke", lengths="16,32,64", batches="1")
    ]
    assert by["tiny/sliding/n16/b1"] == next(c for c in first["cells"] if c["key"] == "tiny/sliding/n16/b1")
    assert by["tiny/sliding/n64/b1"]["process"] == 1 and len(again["processes"]) == 2
    assert (
        by["tiny/sliding/n64/b1"]["results"]["unsloth"]["fwd"]["inferred_from"] == "tiny/sliding/n32/b1:fwd"
    )
    assert any("4 of 6 cells measured before" in line for line in lines)
    assert json.loads((tmp_path / "perf.json").read_text())["processes"] == again["processes"]


def test_resume_measures_what_the_budget_skipped(tmp_path):
    bench.run(tiny_opts(tmp_path, lengths="16", budget_s=0.0), prepare=fake_prepare(), log=lambda s: None)
    calls: list = []
    again = bench.run(
        tiny_opts(tmp_path, lengths="16", resume=True), prepare=fake_prepare(calls=calls), log=lambda s: None
    )
    assert {key for _, key, _ in calls} == {c["key"] for c in again["cells"]}
    assert all(
        r["status"] == "ok"
        for c in again["cells"]
        for i in c["results"].values()
        for r in i.values()
        if isinstance(r, dict)
    )


def test_resume_refuses_a_run_of_other_options(tmp_path, capsys):
    bench.run(tiny_opts(tmp_path, lengths="16", batches="1"), prepare=fake_prepare(), log=lambda s: None)
    before = (tmp_path / "perf.json").read_text()
    with pytest.raises(ValueError, match=r"--resume: .*repeats 3 -> 5"):
        bench.run(
            tiny_opts(tmp_path, lengths="16", batches="1", repeats=5, resume=True),
            prepare=fake_prepare(),
            log=lambda s: None,
        )
    assert (tmp_path / "perf.json").read_text() == before  # nothing measured, nothing written
    args = ["run", "--device", "cpu", "--impls", "sdpa", "--lengths", "16", "--batch", "1", "--no-plot"]
    assert cli.main([*args, "--out", str(tmp_path / "c"), "--repeats", "1"]) == 0
    capsys.readouterr()
    assert cli.main([*args, "--out", str(tmp_path / "c"), "--repeats", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perf: error: --resume:") and err.count("\n") == 1


def test_interrupted_run_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run", interrupted)
    code = cli.main(["run", "--device", "cpu", "--impls", "sdpa", "--lengths", "16", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 130 and err.count("\n") == 1 and "--resume measures the rest" in err


def test_walls_summary_names_the_longest_run_and_first_oom(tmp_path, capsys):
    from gemma2_regress.perf import table

    payload = bench.run(
        tiny_opts(tmp_path, lengths="16,32,64", batches="1", layers="sliding", modes=("fwd",)),
        prepare=fake_prepare(oom_from=32),
        log=lambda s: None,
    )
    lines = table.walls(payload)
    assert lines[0].startswith("walls:")
    assert lines[1].split(":", 1)[1].strip() == "unsloth 16 / 32; flex 64 / -; sdpa 64 / -"
    assert "walls:" in table.render(payload)
    assert cli.main(["table", str(tmp_path / "perf.json")]) == 0
    assert "unsloth 16 / 32; flex 64 / -; sdpa 64 / -" in capsys.readouterr().out
    payload["cells"][-1]["results"] = {
        i: {"fwd": {"status": "skipped: time budget"}} for i in payload["options"]["impls"]
    }
    assert table.walls(payload)[1].endswith("sdpa 32 / - (not measured: 64)")


def test_budget_skips_remaining_cells(tmp_path):
    payload = bench.run(tiny_opts(tmp_path, budget_s=0.0), prepare=fake_prepare(), log=lambda s: None)
    assert all(
        r["status"] == "skipped: time budget"
        for c in payload["cells"]
        for i in c["results"].values()
        for r in i.values()
    )


def test_planted_slowdown_runs_the_kernel_factor_times_and_restores(monkeypatch):
    import types

    from gemma2_regress import unsloth_adapter

    seen = []

    def kernel(q, *rest):
        seen.append(1)
        return q * 2

    mod = types.SimpleNamespace(slow_attention_softcapping=kernel)
    monkeypatch.setattr(unsloth_adapter, "load", lambda: types.SimpleNamespace(kernels_module=mod))
    q = torch.randn(3)
    with impls.planted_slowdown(3):
        assert mod.slow_attention_softcapping is not kernel
        assert torch.allclose(mod.slow_attention_softcapping(q), q * 2)
    assert len(seen) == 3 and mod.slow_attention_softcapping is kernel
    with pytest.raises(ValueError, match=">= 2"), impls.planted_slowdown(1):
        pass


class _SlowDouble(torch.autograd.Function):
    """A stand-in kernel with a known cost: 2 x q, forward and backward each sleeping 20 ms (a sleep
    lasts at least that long, however busy the machine)."""

    @staticmethod
    def forward(ctx, q):
        time.sleep(0.02)
        return q * 2

    @staticmethod
    def backward(ctx, g):
        time.sleep(0.02)
        return g * 2


def _fake_unsloth(monkeypatch, kernel):
    import types

    from gemma2_regress import unsloth_adapter

    mod = types.SimpleNamespace(slow_attention_softcapping=kernel)
    monkeypatch.setattr(unsloth_adapter, "load", lambda: types.SimpleNamespace(kernels_module=mod))
    return mod


def test_fractional_planted_slowdown_stretches_forward_and_backward(monkeypatch):
    """Planted 1.5: each pass waits half its own time again, so the fastest planted call is at least
    1.5 x the fastest real one up to the clean calls' jitter; the minimum over interleaved rounds is
    compared (a busy machine only lengthens calls, and both kinds alike), against a loose 1.2."""
    mod = _fake_unsloth(monkeypatch, lambda q, k, v, *rest: _SlowDouble.apply(q))
    q = torch.randn(4, requires_grad=True)

    def call(backward: bool) -> float:
        q.grad = None
        t0 = time.perf_counter()
        out = mod.slow_attention_softcapping(q, q, q, None, None, 1, 4)
        if backward:
            out.sum().backward()
        return time.perf_counter() - t0

    for backward in (False, True):
        clean, planted = [], []
        for _ in range(5):
            clean.append(call(backward))
            with impls.planted_slowdown(1.5):
                planted.append(call(backward))
        assert 1.2 < min(planted) / min(clean) < 3.0, (backward, clean, planted)
    q.grad = None
    with impls.planted_slowdown(1.5):
        out = mod.slow_attention_softcapping(q, q, q, None, None, 1, 4)
        out.sum().backward()
        assert torch.equal(out, q * 2) and torch.equal(q.grad, torch.full_like(q, 2.0))  # the real results
        with torch.no_grad():  # no graph to stretch: the forward alone, waited on
            t0 = time.perf_counter()
            assert torch.equal(mod.slow_attention_softcapping(q, q, q, None, None, 1, 4), q * 2)
            assert time.perf_counter() - t0 >= 0.03
    assert mod.slow_attention_softcapping.__name__ == "<lambda>"  # restored


@pytest.mark.parametrize("factor", [1, 0.5, 0])
def test_planted_slowdown_below_one_is_refused(monkeypatch, factor):
    _fake_unsloth(monkeypatch, lambda *a: None)
    with pytest.raises(ValueError, match="more than 1"), impls.planted_slowdown(factor):
        pass


# --- the gate ---------------------------------------------------------------------------------
def payload_of(unsloth_ms: float, sdpa_ms: float = 1.0, mib: float = 100.0, status: str = "ok") -> dict:
    def res(ms, peak):
        return {"status": "ok", "median_ms": ms, "peak_mib": peak}

    u = res(unsloth_ms, mib) if status == "ok" else {"status": status}
    return {
        "schema": bench.SCHEMA,
        "cells": [
            {
                "key": "9b/sliding/n8192/b1",
                "results": {
                    "unsloth": {"fwd": u, "fwdbwd": copy.deepcopy(u)},
                    "sdpa": {"fwd": res(sdpa_ms, 10.0), "fwdbwd": res(sdpa_ms, 10.0)},
                },
            }
        ],
    }


@pytest.mark.parametrize(
    "cand, ok, verdict",
    [
        (payload_of(10.0), True, "ok"),
        (payload_of(12.0), True, "ok"),  # 1.2x: inside 1.25
        (payload_of(13.0), False, "slower"),
        (payload_of(20.0, sdpa_ms=2.0), True, "ok"),  # the whole machine 2x slower: normalised away
        (payload_of(10.0, mib=115.0), False, "hungrier"),
        (payload_of(10.0, status="oom"), False, "new-oom"),
    ],
)
def test_compare_thresholds(cand, ok, verdict):
    got_ok, rows = gatecheck.compare(cand, payload_of(10.0), 1.25)
    assert got_ok is ok
    assert {r["verdict"] for r in rows} == {verdict}


def test_compare_raw_basis_and_errors(tmp_path):
    ok, rows = gatecheck.compare(payload_of(20.0, sdpa_ms=2.0), payload_of(10.0), 1.25, basis="raw")
    assert not ok and rows[0]["time_ratio"] == pytest.approx(2.0)
    other = payload_of(10.0)
    other["cells"][0]["key"] = "2b/global/n1024/b1"
    ok, rows = gatecheck.compare(other, payload_of(10.0))
    assert not ok and {r["verdict"] for r in rows} == {"not-compared"}  # nothing compared: no pass
    skipped = payload_of(10.0)
    skipped["cells"][0]["results"]["unsloth"]["fwd"] = {"status": "skipped: time budget"}
    ok, rows = gatecheck.compare(skipped, payload_of(10.0))
    assert ok and sorted(r["verdict"] for r in rows) == ["not-compared", "ok"]
    ok, rows = gatecheck.compare(payload_of(0.01), payload_of(0.02))
    assert ok and {r["verdict"] for r in rows} == {"noise-floor"}
    with pytest.raises(ValueError, match=r"exceed 1\.0"):
        gatecheck.compare(payload_of(1), payload_of(1), 0.9)
    with pytest.raises(ValueError, match="schema"):
        gatecheck.compare({"schema": "x"}, payload_of(1))
    with pytest.raises(FileNotFoundError, match="no such perf JSON"):
        gatecheck.compare(tmp_path / "nope.json", payload_of(1))


def test_cli_compare_exit_codes(tmp_path, capsys):
    base, slow = tmp_path / "base.json", tmp_path / "slow.json"
    base.write_text(json.dumps(payload_of(10.0)))
    slow.write_text(json.dumps(payload_of(25.0)))
    assert cli.main(["compare", str(base), str(base)]) == 0
    assert cli.main(["compare", str(slow), str(base), "--json", str(tmp_path / "gate.json")]) == 1
    assert "perf gate: FAIL" in capsys.readouterr().out
    assert json.loads((tmp_path / "gate.json").read_text())["ok"] is False
    assert cli.main(["compare", str(tmp_path / "missing.json"), str(base)]) == 2


def test_cli_bad_grid_is_a_one_line_error(capsys):
    assert cli.main(["--device", "cpu", "--lengths", "4097..4095"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perf: error: --lengths") and err.count("\n") == 1
