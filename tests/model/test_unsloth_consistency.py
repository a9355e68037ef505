"""Consistency of Unsloth's Gemma-2 across equivalent computations (issue 3, item 3).

Each property runs the *variant* through Unsloth and the *canonical* form through the eager
reference, so one comparison (``tolerance.compare``) says both "the variant equals the canonical
form" and "as accurately as the dtype allows":

- KV cache: prefill ``:split`` with ``use_cache=True``, then ``split:`` with the cache == the full
  forward at ``split:`` (a one-token suffix takes Unsloth's decode path);
- batch row: a row in a batch == that row alone;
- padded row: a row padded left or right, with its attention_mask == the row unpadded, at its real
  positions;
- generation: ``FastLanguageModel.for_inference`` + greedy ``generate`` from prompts longer than
  the window == transformers' greedy generation (tokens, up to a near tie; first-step logits).
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fixtures.model import bound_session
from gemma2_regress.kernel.cases import DTYPES, GEMMA2_WINDOW
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import budget, gpu_phases
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import (
    check_generation,
    check_kv_cache,
    check_padded_row,
    check_row_alone,
)

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]
W = GEMMA2_WINDOW
# Each property is one test per dtype: each compiles only its dtype's graphs, and xdist spreads them
# over workers and GPUs; the budgets are the property's share of the profile split over the dtypes.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
per_dtype = pytest.mark.parametrize("dtype", DTYPE_NAMES)
MASKS = st.sampled_from(["none", "ones", "left"])


def _batch(config, bsz: int, n: int, mask_kind: str, seed: int):
    pads = tuple(7 * (b + 1) if b % 2 == 0 else 0 for b in range(bsz)) if mask_kind == "left" else ()
    ids, mask = tiny.token_batch(config, bsz, n, pads=pads, side="left" if pads else "none", seed=seed)
    return ids, (None if mask_kind == "none" else mask)


def _targets(dtype: str):
    return gpu_targets(tiny.checkpoint(init="large"), DTYPES[dtype], bound_session())


@per_dtype
@settings(max_examples=budget(0.25 / 3, at_least=2), phases=gpu_phases())
@given(
    n=st.sampled_from([W + 1, 2 * W]),
    split=st.sampled_from([W - 96, W - 1, W, -1]),
    bsz=st.integers(1, 2),
    mask_kind=MASKS,
    explicit=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(n=W + 1, split=W - 96, bsz=2, mask_kind="left", explicit=False, seed=1)
@example(n=2 * W, split=-1, bsz=1, mask_kind="none", explicit=True, seed=2)
def test_kv_cache_continuation(
    dtype: str, n: int, split: int, bsz: int, mask_kind: str, explicit: bool, seed: int, unsloth_ready: None
) -> None:
    """Prefix into a KV cache, then the suffix (crossing the window) == the full forward.

    A one-token suffix (Unsloth's decode path) always gets explicit position_ids here, as
    ``generate`` passes them; calling it without is ``test_decode_step_without_position_ids``."""
    target, golden, baseline = _targets(dtype)
    ids, mask = _batch(target.config, bsz, n, mask_kind, seed)
    split %= n
    explicit = explicit or n - split == 1
    check_kv_cache(target, golden, baseline, ids, mask, split, DTYPES[dtype], explicit_positions=explicit)


def test_decode_step_without_position_ids(unsloth_ready: None) -> None:
    """``model(next_token, past_key_values=cache)`` with no position_ids, as in a hand-written decode
    loop (transformers infers the position from the cache). Past the window, fp32, one row."""
    target, golden, baseline = _targets("float32")
    ids, _ = _batch(target.config, 1, W + 1, "none", seed=3)
    check_kv_cache(target, golden, baseline, ids, None, W, DTYPES["float32"], explicit_positions=False)


@per_dtype
@settings(max_examples=budget(0.2 / 3, at_least=2), phases=gpu_phases())
@given(
    n=st.sampled_from([W + 1, 2 * W]),
    bsz=st.integers(2, 4),
    row=st.integers(0, 3),
    mask_kind=MASKS,
)
@example(n=W + 1, bsz=4, row=0, mask_kind="left")
def test_batch_row_equals_row_alone(
    dtype: str, n: int, bsz: int, row: int, mask_kind: str, unsloth_ready: None
) -> None:
    """A row of a batch gives the logits it gives alone."""
    row %= bsz
    target, golden, baseline = _targets(dtype)
    ids, mask = _batch(target.config, bsz, n, mask_kind, seed=bsz + 11)
    check_row_alone(target, golden, baseline, ids, mask, row, DTYPES[dtype])


@per_dtype
@settings(max_examples=budget(0.2 / 3, at_least=2), phases=gpu_phases())
@given(
    n=st.sampled_from([W + 1, W + 104]),
    pad=st.sampled_from([1, 7, 100]),
    side=st.sampled_from(["left", "right"]),
    companion=st.booleans(),
)
@example(n=W + 1, pad=7, side="left", companion=True)
@example(n=W + 104, pad=100, side="right", companion=False)
def test_padded_row_equals_unpadded(
    dtype: str, n: int, pad: int, side: str, companion: bool, unsloth_ready: None
) -> None:
    """A padded row (with its attention_mask) gives, at its real positions, the unpadded row's logits."""
    target, golden, baseline = _targets(dtype)
    ids, _ = tiny.token_batch(target.config, 2, n + pad, seed=pad)
    other = ids[1:] if companion else None
    check_padded_row(target, golden, baseline, ids[:1, :n], pad, side, DTYPES[dtype], companion=other)


GENERATIONS = [
    pytest.param(1, W + 104, "float32", id="b1-prompt4200-fp32"),
    pytest.param(2, W + 104, "float32", id="b2-leftpad-prompt4200-fp32"),
    pytest.param(1, W - 2, "float32", id="b1-prompt4094-decode-crosses-window-fp32"),
    pytest.param(1, 2 * W + 1, "bfloat16", id="b1-prompt8193-bf16"),
]


@pytest.mark.parametrize(("bsz", "prompt", "dtype"), GENERATIONS)
def test_greedy_generation(bsz: int, prompt: int, dtype: str, unsloth_ready: None) -> None:
    """for_inference + greedy generate from a prompt past (or reaching) the window == transformers'."""
    target, golden, baseline = _targets(dtype)
    pads = (9,) + (0,) * (bsz - 1) if bsz > 1 else ()
    ids, mask = tiny.token_batch(
        target.config, bsz, prompt, pads=pads, side="left" if pads else "none", seed=prompt
    )
    check_generation(target, golden, baseline, ids, mask if pads else None, 6, DTYPES[dtype])
