"""The oracle, softcap on, against PyTorch's flex attention with a tanh ``score_mod``.

Flex attention is the one independent implementation that takes a softcap: its ``score_mod``
receives the scaled logit and returns ``t * tanh(score / t)``; a ``mask_mod`` states the window
(``q - W < kv <= q``, absolute positions), and padding. On CPU it runs unfused ("eager", it
materialises the scores: float64 works) and, where a C++ toolchain is present, compiled by
inductor. The compiled run is one fixed case, run in a child process (a fault in inductor's generated
code, as under some ``ATEN_CPU_CAPABILITY`` settings, kills that child, not the test run); if it
cannot run here the test is skipped with what stopped it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import example, given

from gemma2_regress.kernel.cases import Case, make_inputs
from gemma2_regress.kernel.strategies import CRASH_2024, small_window_cases
from gemma2_regress.reference import masks, oracle, tolerance

flex = pytest.importorskip("torch.nn.attention.flex_attention", reason="this torch has no flex attention")


def softcap_score_mod(cap: float):
    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    softcap.__name__ = f"softcap_{cap:g}"
    return softcap


def window_mask_mod(case: Case, key_valid: torch.Tensor | None):
    """Causal, sliding ``q - W < kv`` (absolute positions: queries are the last q_len), padding."""
    offset = case.kv_len - case.q_len

    def visible(b, h, q_idx, kv_idx):
        pos = q_idx + offset
        ok = kv_idx <= pos
        if case.window is not None:
            ok = ok & (pos - kv_idx < case.window)
        if key_valid is not None:
            ok = ok & key_valid[b, kv_idx].bool()
        return ok

    return visible


@contextlib.contextmanager
def unfused_without_dynamo():
    """Run flex's unfused math path directly, not through dynamo (which re-traces for every new
    mask_mod closure, ~2 s an example). Forward values are the same; flex warns only about backward."""
    if not hasattr(flex, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG"):  # older torch: plain eager flex
        yield
        return
    old = flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG
    flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
    try:
        yield
    finally:
        flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = old


def run_flex(x, case: Case, dtype: torch.dtype, fn=None) -> torch.Tensor:
    """Flex attention on the case's inputs in ``dtype``: unfused (``fn=None``) or through ``fn``."""
    with contextlib.nullcontext() if fn else unfused_without_dynamo():
        block_mask = flex.create_block_mask(
            window_mask_mod(case, x.key_valid), case.bsz, None, case.q_len, case.kv_len, device="cpu"
        )
        out = (fn or flex.flex_attention)(
            x.q.to(dtype),
            x.k.to(dtype),
            x.v.to(dtype),
            score_mod=None if case.softcap is None else softcap_score_mod(case.softcap),
            block_mask=block_mask,
            scale=case.scalar**-0.5,
            enable_gqa=True,
        )
    return out.transpose(1, 2).reshape(case.bsz, case.q_len, -1)


def compare_oracle_with_flex(
    case: Case, dtypes=(torch.float64, torch.float32), compiled: torch.Tensor | None = None
) -> list[tolerance.Comparison]:
    """Per dtype: oracle in it (target) vs flex in float64 (golden) and flex in it (baseline); with
    ``compiled`` (compiled flex's output in the one dtype given), that is the baseline."""
    x = make_inputs(case)
    kw = dict(scalar=case.scalar, softcap=case.softcap, window=case.window, key_valid=x.key_valid)
    golden = run_flex(x, case, torch.float64)
    valid = masks.valid_queries(x.key_valid, case.q_len)
    out = []
    for dtype in dtypes:
        target = oracle.attention(x.q, x.k, x.v, dtype=dtype, **kw)
        if compiled is not None:
            baseline = compiled
        else:
            baseline = golden if dtype == torch.float64 else run_flex(x, case, dtype)
        floor = torch.as_tensor(tolerance.attention_floor(x.q, x.k, x.v, dtype=dtype, **kw)).expand_as(golden)
        g = golden
        if valid is not None:  # flex returns 0 on a fully padded query row, the oracle a uniform average
            target, g, baseline, floor = target[valid], g[valid], baseline[valid], floor[valid]
        cmp = tolerance.compare(target, g, baseline, dtype=dtype, floor=floor)
        assert cmp.ok, (
            f"oracle vs flex ({dtype}, {'eager' if compiled is None else 'compiled'}) for {case.short()}: {cmp.describe()}"
        )
        out.append(cmp)
    return out


@given(case=small_window_cases(dtypes=("float32",), max_elems=2**17))
@example(case=Case(bsz=2, q_len=70, kv_len=70, window=32, pad_side="left", pads=(5, 70), logit_std=50.0))
@example(case=Case(bsz=1, n_heads=8, n_kv_heads=2, q_len=3, kv_len=130, window=64, logit_std=100.0))
def test_oracle_matches_flex(case: Case) -> None:
    """float64 and float32 against flex eager, softcap 50 in tanh's curved range included."""
    compare_oracle_with_flex(case)


def test_flex_check_sees_the_cap() -> None:
    """The comparison can fail: at logits in tanh's curved range, an oracle without the cap is caught."""
    case = Case(bsz=1, q_len=48, kv_len=48, window=16, logit_std=50.0)
    x = make_inputs(case)
    uncapped = oracle.attention(x.q, x.k, x.v, scalar=case.scalar, softcap=None, window=16)
    golden = run_flex(x, case, torch.float64)
    cmp = tolerance.compare(uncapped, golden, golden, dtype=torch.float64)
    assert not cmp.ok and cmp.err_target > 1e-2, cmp.describe()


COMPILED_CASE = Case(**{**CRASH_2024.__dict__, "kv_len": 300, "q_len": 300, "window": 128, "pads": (7, 0)})


def _compiled_flex_child(out: str) -> None:
    """In the child: compiled flex on ``COMPILED_CASE`` in float32, saved to ``out``."""
    compiled = torch.compile(flex.flex_attention, dynamic=False)
    torch.save(run_flex(make_inputs(COMPILED_CASE), COMPILED_CASE, torch.float32, compiled), out)


def test_oracle_matches_compiled_flex(tmp_path: Path) -> None:
    """One case through inductor-compiled flex on CPU (float32): the 2024 case scaled down (W=128, 300 tokens, left pad)."""
    out = tmp_path / "compiled.pt"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.run(
        [sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=900
    )
    if child.returncode < 0:  # killed by a signal: a fault in inductor's generated code
        pytest.skip(
            f"compiled flex attention crashed on this CPU ({signal.Signals(-child.returncode).name}): a fault "
            "in torch inductor's generated code; the eager flex checks above still run"
        )
    if child.returncode:  # compiling needs a C++ toolchain and inductor's CPU flex support
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"compiled flex attention does not run on this CPU: {last[:300]}")
    compare_oracle_with_flex(COMPILED_CASE, (torch.float32,), torch.load(out))


if __name__ == "__main__":
    _compiled_flex_child(sys.argv[1])
