"""Unsloth's Gemma-2 forward vs transformers' eager Gemma-2: logits and loss.

Every example loads (once per dtype and init, cached) the tiny checkpoint with
``FastLanguageModel.from_pretrained`` and compares Unsloth's logits at every real position, and its
loss, with the eager model in float64 (golden) and in Unsloth's dtype (baseline), by the one rule of
``gemma2_regress.reference.tolerance``. Lengths sit on and past the 4096 window (4095, 4096, 4097, 8192, 16384);
batch 1..8; no, left or right padding; with and without an attention_mask; eval and train mode
(train mode with labels only with right padding: Unsloth drops the mask there, by design).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.model import bound_session
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase, budget, gpu_phases, model_cases
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import check_logits_and_loss

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]

# Pinned: the 2024 crash (an eval batch past the window, left padding, an attention_mask) in fp32
# and bf16, and one example of each path Unsloth distinguishes (static masks, per-call 4-D masks,
# train mode with and without labels, the longest length, a fully padded row). The two long padded
# batches put their longest row last, after rows inside the window; one pads rows on both ends.
PINNED = [
    ModelCase(bsz=2, seq_len=4200, pad_side="left", pads=(7, 0), dtype="float32", seed=853),
    ModelCase(bsz=2, seq_len=4200, pad_side="left", pads=(7, 0), dtype="bfloat16", seed=853),
    ModelCase(bsz=1, seq_len=4096, with_mask=True, dtype="float32", init="default"),
    ModelCase(bsz=1, seq_len=16384, with_mask=False, with_labels=False, dtype="bfloat16"),
    ModelCase(
        bsz=8,
        seq_len=4097,
        pad_side="right",
        pads=(2048, 1, 7, 64, 3, 1, 2, 0),
        mode="train",
        dtype="float16",
    ),
    ModelCase(
        bsz=4,
        seq_len=8192,
        pad_side="both",
        pads=(3000, 7, 1, 0),
        right_pads=(2000, 64, 0, 0),
        dtype="float32",
    ),
    ModelCase(
        bsz=2, seq_len=4097, pad_side="left", pads=(2, 0), with_labels=False, mode="train", dtype="bfloat16"
    ),
    ModelCase(bsz=3, seq_len=4096, pad_side="right", pads=(3, 0, 4096), dtype="float16"),
]


def run(case: ModelCase) -> None:
    path = tiny.checkpoint(init=case.init)
    check_logits_and_loss(*gpu_targets(path, case.torch_dtype, bound_session()), case)


DTYPES = ("float32", "bfloat16", "float16")


# One test per dtype: each compiles only its dtype's graphs, and xdist spreads them over workers/GPUs.
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=budget(0.5), phases=gpu_phases())
@given(data=st.data())
def test_logits_and_loss(dtype: str, data: st.DataObject, unsloth_ready: None) -> None:
    """Unsloth's logits (real positions) and loss equal transformers' eager Gemma-2's (drawn cases)."""
    run(data.draw(model_cases(dtypes=(dtype,)), label="case"))


@pytest.mark.parametrize(
    "case", PINNED, ids=[f"b{c.bsz}-L{c.seq_len}-{c.pad_side}-{c.mode}-{c.dtype}" for c in PINNED]
)
def test_logits_and_loss_pinned(case: ModelCase, unsloth_ready: None) -> None:
    """The pinned cases above, each its own test (the 2024 crash case first)."""
    run(case)


def test_fp32_agrees_closely_at_the_measured_shapes(unsloth_ready: None) -> None:
    """fp32 at the shapes first measured on an H200 (4000, 4097 and 8192 tokens, default init): the
    tolerance rule must hold there too (a regression guard on the shapes the docs quote)."""
    for bsz, n in ((1, 4000), (2, 4097), (1, 8192)):
        run(ModelCase(bsz=bsz, seq_len=n, dtype="float32", init="default"))
