"""Unsloth's flash-attn path, one layer of the tiny Gemma-2: Unsloth's own code from the flash / slow choice
down, with flash-attn's reference stand-in (docs/flash.md, "Unsloth's flash path on CPU"), on CPU and, in
the GPU tier, on CUDA (where Unsloth's Triton RoPE runs with identity tables).

Unsloth's whole model does not run on a CPU (it loads and ropes on CUDA), so each test feeds
``Gemma2Attention_fast_forward`` what ``LlamaModel_fast_forward`` hands a layer of the tiny config
(``kernel.targets.Gemma2LayerTarget``) inside ``unsloth_flash.flash_path(u, device)``, records every call Unsloth
makes to flash-attn, and judges the output against the oracle with the one tolerance rule
(``kernel.properties.check_kernel_matches_oracle``). Cases sit at the window: W-1, W, W+1 and past 2W
keys, on a sliding and a global layer, at two logit scales (``LOGITS``): near the cap, where a dropped or
misplaced cap shows, and nearly uniform, where every key weighs about 1/W and one key too many or too
few shows (near the cap most keys weigh next to nothing, so an extra one can hide under the bound).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch

from gemma2_regress import unsloth_adapter, unsloth_flash
from gemma2_regress.kernel.cases import Case
from gemma2_regress.kernel.properties import check_kernel_matches_oracle
from gemma2_regress.kernel.targets import Gemma2LayerTarget
from gemma2_regress.model import tiny

# One worker: the padded cases compile Unsloth's slow kernel once for the file.
pytestmark = [pytest.mark.unsloth, pytest.mark.xdist_group("unsloth-flash-cpu")]

SMALL_W = 16


# The configs are made at first use, not at import: collection must not import transformers (fixtures/model.py).
@functools.cache
def small() -> Any:
    """A window of ``SMALL_W``; query_pre_attn_scalar 24 != head_dim 16 (as in Gemma-2 27B, 144 != 128): a scale
    taken from head_dim shows."""
    return tiny.tiny_config(sliding_window=SMALL_W, query_pre_attn_scalar=24)


@functools.cache
def real() -> Any:
    """The tiny Gemma-2's own window: Gemma-2's 4096."""
    return tiny.tiny_config()


# Raw-logit standard deviation as a fraction of the cap: "cap" reaches tanh's curved range, "uniform" keeps
# the weights within a few percent of 1/n.
LOGITS = {"cap": 1.0, "uniform": 0.002}


def layer_case(
    config, n: int, *, sliding: bool, dtype: str, bsz: int = 1, pads=(), side="none", seed=0, logits="cap"
) -> Case:
    """A case with ``config``'s geometry, cap and scalar, ``n`` tokens a row, raw logits at scale ``logits``."""
    return Case(
        bsz=bsz,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        q_len=n,
        kv_len=n,
        window=config.sliding_window if sliding else None,
        pad_side=side,
        pads=tuple(pads),
        dtype=dtype,
        softcap=config.attn_logit_softcapping,
        scalar=float(config.query_pre_attn_scalar),
        logit_std=config.attn_logit_softcapping * LOGITS[logits],
        seed=seed,
    )


def run_on_flash_path(target: Gemma2LayerTarget, case: Case, device: str) -> list[unsloth_flash.FlashCall]:
    """The target against the oracle inside ``unsloth_flash.flash_path(u, device)``; the flash-attn calls it made."""
    u = unsloth_adapter.load()
    reason = unsloth_flash.flash_path_unavailable(u, device)
    if reason is not None:
        pytest.skip(f"Unsloth's flash-attn path cannot be given on {device}: {reason}")
    with unsloth_flash.flash_path(u, device) as which, unsloth_flash.recording_flash_calls(u) as calls:
        assert which.startswith(("reference stand-in", "flash-attn")), which
        check_kernel_matches_oracle(target, case, device)
    return calls


def keys_seen(window_size: tuple[int, int], n: int) -> int:
    """How many keys flash-attn's causal ``window_size`` lets the last of ``n`` queries see (-1: unbounded)."""
    left = window_size[0]
    return n if left < 0 else min(left, n - 1) + 1


def assert_flash_call(call: unsloth_flash.FlashCall, case: Case, config, function: str) -> None:
    """What flash-attn received: ``function``, the case's dtype, causal, the config's cap and scale, and
    a window under which the last query of every row (segment) sees what the oracle's window allows."""
    got = (call.function, call.dtype, call.causal, call.softcap)
    want = (function, case.torch_dtype, True, config.attn_logit_softcapping)
    assert got == want, f"flash-attn received {call}; want (function, dtype, causal, softcap) {want}"
    assert math.isclose(call.softmax_scale, config.query_pre_attn_scalar**-0.5, rel_tol=1e-12), call
    assert call.window_size[1] in (0, -1), f"right bound {call.window_size[1]}: a query would see later keys"
    lengths = [case.kv_len - p for p in case.pads] if case.padded else [case.kv_len]
    for n in lengths:
        want_seen = n if case.window is None else min(case.window, n)
        assert keys_seen(call.window_size, n) == want_seen, (
            f"window_size {call.window_size} lets the last of {n} queries see "
            f"{keys_seen(call.window_size, n)} keys; the oracle's window {case.window}: {want_seen}"
        )


# --- unpadded prefill: FLASH_DENSE -------------------------------------------------------------------


@pytest.mark.parametrize("logits", list(LOGITS))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "global"])
@pytest.mark.parametrize("n", [SMALL_W - 1, SMALL_W, SMALL_W + 1, 2 * SMALL_W + 1], ids=lambda n: f"L{n}")
def test_unpadded_prefill_takes_flash_dense(
    n: int, sliding: bool, dtype: str, logits: str, device: str
) -> None:
    """No mask reaches the layer: one flash_attn_func call with the layer's window, cap and scale, and
    the output is the oracle's, at and across the window."""
    case = layer_case(small(), n, sliding=sliding, dtype=dtype, bsz=2, seed=n, logits=logits)
    calls = run_on_flash_path(Gemma2LayerTarget("no-mask", small()), case, device)
    assert [c.function for c in calls] == ["flash_attn_func"], calls
    assert_flash_call(calls[0], case, small(), "flash_attn_func")
    assert calls[0].q_shape == (case.bsz, n, case.n_heads, case.head_dim), calls[0]


@pytest.mark.slow
@pytest.mark.parametrize("n", [4095, 4096, 4097, 8193], ids=lambda n: f"L{n}")
def test_unpadded_prefill_at_the_real_window(n: int, device: str) -> None:
    """The same at the tiny Gemma-2's own window, Gemma-2's 4096, in bfloat16."""
    case = layer_case(real(), n, sliding=True, dtype="bfloat16", seed=n)
    calls = run_on_flash_path(Gemma2LayerTarget("no-mask", real()), case, device)
    assert [c.function for c in calls] == ["flash_attn_func"], calls
    assert_flash_call(calls[0], case, real(), "flash_attn_func")


# --- a padded batch: the slow path ---------------------------------------------------------------------


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "global"])
@pytest.mark.parametrize(
    ("side", "pads"), [("left", (7, 0)), ("right", (0, SMALL_W + 3))], ids=["left-7-0", "right-0-19"]
)
def test_padded_batch_takes_the_slow_path(
    side: str, pads: tuple[int, int], sliding: bool, device: str
) -> None:
    """A padded evaluation batch keeps its mask, so the layer must not call flash-attn (which takes no
    padding mask) and must reach the slow kernel with Unsloth's 4-D masks: no call, oracle's output."""
    case = layer_case(
        small(), 2 * SMALL_W + 5, sliding=sliding, dtype="bfloat16", bsz=2, pads=pads, side=side
    )
    calls = run_on_flash_path(Gemma2LayerTarget("padding-mask", small()), case, device)
    assert calls == [], f"a padded batch reached flash-attn: {calls}"


# --- a packed batch: FLASH_VARLEN -------------------------------------------------------------------


@pytest.mark.parametrize("logits", list(LOGITS))
@pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "global"])
def test_packed_batch_takes_flash_varlen(sliding: bool, logits: str, device: str) -> None:
    """Rows of 2W+5, W+2 and W-1 real tokens packed into one row plus 3 junk tokens: one
    flash_attn_varlen_func call whose int32 cu_seqlens are the rows' boundaries and the junk's, and each
    row's output is the oracle's for that row alone."""
    n = 2 * SMALL_W + 5
    pads = (0, n - (SMALL_W + 2), n - (SMALL_W - 1))
    case = layer_case(
        small(), n, sliding=sliding, dtype="bfloat16", bsz=3, pads=pads, side="right", logits=logits
    )
    calls = run_on_flash_path(Gemma2LayerTarget("packed", small(), tail=3), case, device)
    assert [c.function for c in calls] == ["flash_attn_varlen_func"], calls
    assert_flash_call(calls[0], case, small(), "flash_attn_varlen_func")
    ends = torch.tensor([n - p for p in pads]).cumsum(0).tolist()
    assert calls[0].cu_seqlens == (0, *ends, ends[-1] + 3), calls[0]
    assert calls[0].cu_seqlens_dtype == torch.int32, calls[0]


# --- float32 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "global"])
def test_float32_layer_on_the_flash_path(sliding: bool, device: str) -> None:
    """A float32 model's layer on the flash path returns float32 attention as accurate as float32 allows.
    (Unsloth 2026.10.9: a known issue, fixtures/known_issues.py.)"""
    case = layer_case(small(), 2 * SMALL_W + 1, sliding=sliding, dtype="float32", bsz=2)
    run_on_flash_path(Gemma2LayerTarget("no-mask", small()), case, device)


# --- the target's own input checks ------------------------------------------------------------------------


def test_layer_target_refuses_a_case_the_config_does_not_have() -> None:
    case = layer_case(small(), 8, sliding=True, dtype="bfloat16")
    other = Case(**{**case.__dict__, "window": SMALL_W + 1})
    padded = layer_case(small(), 8, sliding=True, dtype="bfloat16", bsz=2, pads=(2, 0), side="left")
    with pytest.raises(ValueError, match="neither global nor the config's 16"):
        Gemma2LayerTarget("no-mask", small()).run(other, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs inputs 'padding-mask' or 'packed'"):
        Gemma2LayerTarget("no-mask", small()).run(padded, None)  # type: ignore[arg-type]
    assert Gemma2LayerTarget("packed", small()).supports(padded)
