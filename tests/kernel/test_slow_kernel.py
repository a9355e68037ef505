"""Unsloth's slow softcapping kernels against the float64 oracle, on CPU (and CUDA in the GPU tier).

Each kernel is fed four kinds of masks (targets.MASK_SOURCES): ones the oracle builds, and the ones
Unsloth's own builders produce for training (static 2-D) and evaluation (per-call 4-D), so a bug in
either the kernel or the mask that reaches it shows up here.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fixtures.known_issues import KNOWN_ISSUES
from gemma2_regress.kernel import strategies, targets
from gemma2_regress.kernel.cases import Case
from gemma2_regress.kernel.properties import check_kernel_matches_oracle
from gemma2_regress.kernel.strategies import CRASH_2024
from gemma2_regress.plugins.strict_xfail import assume_not_known
from gemma2_regress.unsloth_adapter import installed_version

pytestmark = pytest.mark.unsloth
# Rows on both sides of the real window, the longest last: row 0 holds 4094 real tokens between pads
# on both ends (inside the window), row 1 all 4097 (across it); the last 64 queries keep it cheap.
REAL_WINDOW_ROWS = Case(
    bsz=2,
    n_heads=2,
    n_kv_heads=1,
    head_dim=16,
    q_len=64,
    kv_len=4097,
    window=4096,
    pad_side="both",
    pads=(2, 0),
    right_pads=(1, 0),
    logit_std=25.0,
    seed=4,
)
KERNEL_TARGETS = [pytest.param(t, id=t.name) for t in targets.kernel_targets()]
UNSLOTH_MASK_TARGETS = [
    pytest.param(t, id=t.name) for t in targets.kernel_targets(lambda t: t.mask_source.startswith("unsloth"))
]
EDGE_W = 16


def _check(target: targets.KernelTarget, case: Case, device: str) -> None:
    """Static 2-D masks carry no padding: such targets get the case unpadded."""
    if not target.supports(case):
        case = case.unpadded()
    assume_not_known(KNOWN_ISSUES, target.name, case, device, installed_version())
    check_kernel_matches_oracle(target, case, device)


@pytest.mark.xdist_group("kernel-small")  # one worker keeps the compiled kernels warm
@pytest.mark.parametrize("target", KERNEL_TARGETS)
@given(data=st.data())
def test_small_windows(target: targets.KernelTarget, data, device: str) -> None:
    """Windows of 1..64 and lengths around them: many cheap examples (one geometry on a GPU)."""
    geometries = strategies.GPU_GEOMETRIES if device == "cuda" else None
    case = data.draw(strategies.small_window_cases(geometries=geometries), label="case")
    _check(target, case, device)


@pytest.mark.slow
@pytest.mark.xdist_group("kernel-real")  # one worker shares each 8k float64 reference among targets
@pytest.mark.parametrize("target", KERNEL_TARGETS)
@settings(max_examples=3)
@given(case=strategies.real_window_cases())
@example(case=CRASH_2024)
@example(case=REAL_WINDOW_ROWS)
def test_real_window(target: targets.KernelTarget, case, device: str) -> None:
    """Gemma-2's real 4096 window, crossed: 4095..4097 and 8191..8193 tokens, with the 2024 case pinned."""
    _check(target, case, device)


@pytest.mark.xdist_group("kernel-small")
@pytest.mark.parametrize("target", UNSLOTH_MASK_TARGETS)
@pytest.mark.parametrize("n", [EDGE_W - 1, EDGE_W, EDGE_W + 1, 2 * EDGE_W + 1], ids=lambda n: f"L{n}")
def test_window_edge(target: targets.KernelTarget, n: int, device: str) -> None:
    """Unsloth's own sliding-window masks at the window's edge, pinned: n = W-1, W, W+1, 2W+1 queries
    over as many keys (no cache, no padding), W = 16, float32, logits nearly uniform (std 0.1), so that
    every key weighs about 1/W and a window one key too wide or too narrow is a mismatch of the last
    queries. The counterpart of the flash path's tests/model/test_unsloth_flash_layer.py, for bisecting
    the window's history on the slow path (docs/bisect.md)."""
    case = Case(bsz=2, q_len=n, kv_len=n, window=EDGE_W, dtype="float32", logit_std=0.1, seed=n)
    _check(target, case, device)
