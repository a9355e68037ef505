"""The perf implementations for real on CPU, at the tiny shape (wall-clock timers, no memory figures):
SDPA and flex attention through the runner, and Unsloth's real kernel, clean and with the planted
slowdown that the release gate must catch."""

from __future__ import annotations

import time

import pytest
import torch

from gemma2_regress import unsloth_adapter
from gemma2_regress.perf import bench, grid, impls
from gemma2_regress.perf.grid import Cell


def test_tiny_cpu_run_with_wall_clock_timers(tmp_path):
    cells = grid.select("smoke", lengths="33", batches="2", layers="sliding")
    opts = bench.Options(
        cells=cells,
        impls=("flex", "sdpa"),
        repeats=2,
        warmup=1,
        device="cpu",
        dtype="float32",
        out=tmp_path,
        compile_flex=False,
    )
    payload = bench.run(opts, log=lambda s: None)
    assert payload["timer"] == "wall-clock" and payload["complete"]
    res = payload["cells"][0]["results"]
    for mode in ("fwd", "fwdbwd"):
        sd = res["sdpa"][mode]
        assert sd["status"] == "ok" and sd["median_ms"] > 0 and sd["peak_mib"] is None and sd["tflops"] > 0
        fx = res["flex"][mode]["status"]
        # torch's flex attention has no CPU backward; the runner records that and goes on.
        assert fx == "ok" or (fx.startswith("error:NotImplementedError") and "CPU" in fx), fx
    assert res["sdpa"]["sdpa_mode"] in ("gqa", "repeated-kv")
    assert res["sdpa"]["finite"] is True


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_and_sdpa_compute_attention_as_stated():
    """The floor and the flex implementation are what they claim: flex (eager, no grad) matches a
    softcapped sliding-window reference; SDPA matches causal attention without cap."""
    from gemma2_regress.reference import oracle

    cell = Cell("tiny", "sliding", 40, 1)
    t = impls.make_tensors(cell, "cpu", torch.float32)
    s = cell.shape
    with torch.no_grad():
        q, k, v = (x.detach() for x in (t.q, t.k, t.v))
        flex = impls._flex_fn(False)(
            q,
            k,
            v,
            score_mod=impls._tanh_softcap(s.softcap),
            block_mask=impls._block_mask(s.window, 40, "cpu"),
            scale=s.scalar**-0.5,
            enable_gqa=True,
        )
        ref = oracle.attention(
            q, k, v, scalar=s.scalar, softcap=s.softcap, window=s.window, dtype=torch.float64
        )
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=s.scalar**-0.5, enable_gqa=True
        )
        ref_nocap = oracle.attention(q, k, v, scalar=s.scalar, softcap=None, window=None, dtype=torch.float64)
    to_bnhd = lambda x: x.transpose(1, 2).reshape(1, 40, -1).double()  # noqa: E731
    assert (to_bnhd(flex) - ref).abs().max() < 1e-4
    assert (to_bnhd(sdpa) - ref_nocap).abs().max() < 1e-4


@pytest.mark.unsloth
def test_unsloth_tiny_run_and_planted_slowdown(tmp_path, monkeypatch):
    cells = [Cell("tiny", "sliding", 40, 2)]
    opts = bench.Options(
        cells=cells, impls=("unsloth",), repeats=2, warmup=1, device="cpu", dtype="float32", out=tmp_path
    )
    res = bench.run(opts, log=lambda s: None)["cells"][0]["results"]["unsloth"]
    assert res["fwd"]["status"] == "ok" and res["fwdbwd"]["status"] == "ok", res
    assert res["finite"] is True

    u = unsloth_adapter.load()
    real, count = u.kernels_module.slow_attention_softcapping, []

    def counting(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(u.kernels_module, "slow_attention_softcapping", counting)
    t = impls.make_tensors(cells[0], "cpu", torch.float32)
    call = impls.prepare_unsloth(cells[0], t)
    call("fwdbwd")
    clean_out = [x.grad.clone() for x in (t.q, t.k, t.v)]
    assert len(count) == 1
    with impls.planted_slowdown(2):
        call("fwdbwd")
    assert len(count) == 3  # the planted call evaluated the real kernel twice
    assert u.kernels_module.slow_attention_softcapping is counting  # restored
    for clean, planted in zip(clean_out, (t.q.grad, t.k.grad, t.v.grad), strict=True):
        assert torch.allclose(clean, planted, rtol=1e-5, atol=1e-6)  # same result: only the cost changed


@pytest.mark.unsloth
def test_unsloth_fractional_planted_slowdown_is_real_and_compiles_nothing():
    """Planted 1.5 on the real kernel: the same outputs and gradients, no new compiled graph, and the
    calls slower. Robust on a busy machine: each planted pass waits at least half its own time, so the
    planted minimum over interleaved rounds is >= 1.5 x the real kernel's fastest run; rounds go on
    (up to 40) until the clean minimum has found that floor too, and the check is a loose 1.2."""
    import torch._dynamo.utils

    cell = Cell("tiny", "sliding", 256, 2)
    t = impls.make_tensors(cell, "cpu", torch.float32)
    call = impls.prepare_unsloth(cell, t)
    call("fwdbwd")  # compiles (or finds it cached): not part of what is checked
    clean = [x.grad.clone() for x in (t.q, t.k, t.v)]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]

    def timed(mode: str) -> float:
        t0 = time.perf_counter()
        call(mode)
        return time.perf_counter() - t0

    for mode in ("fwd", "fwdbwd"):
        c, p = [], []
        for k in range(40):
            c.append(timed(mode))
            with impls.planted_slowdown(1.5):
                p.append(timed(mode))
            if k >= 4 and min(p) / min(c) > 1.2:
                break
        assert min(p) / min(c) > 1.2, (mode, sorted(c)[:3], sorted(p)[:3])
    with impls.planted_slowdown(1.5):
        call("fwdbwd")
    for want, got in zip(clean, (t.q.grad, t.k.grad, t.v.grad), strict=True):
        assert torch.equal(want, got)  # the real kernel's gradients, bit for bit
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # nothing recompiled
