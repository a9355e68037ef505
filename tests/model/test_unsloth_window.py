"""The sliding window at model level, made observable (issue 3, item 4).

A one-layer probe checkpoint (``tiny.checkpoint(init="probe", num_hidden_layers=1)``: q_proj zero,
so attention is uniform over exactly the keys the window admits; v_proj scaled up; no final
softcap). Changing the token W-1 positions before the last query must change that query's logits,
and changing the token W or W+1 before must not (transformers' convention: W keys including the
query itself), with no attention_mask (Unsloth's static masks), an all-ones mask, and a left-padded
mask (Unsloth's per-call 4-D masks). float32 only: a one-key change in a 4096-key average moves the
logits by ~1e-4, below bfloat16's resolution.
"""

from __future__ import annotations

import pytest
import torch

from gemma2_regress.kernel.cases import GEMMA2_WINDOW
from gemma2_regress.model import tiny
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import check_window_boundary
from gemma2_regress.model.session import ModelSession

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]
W = GEMMA2_WINDOW


@pytest.mark.parametrize("n", [W + 104, 2 * W + 1])
@pytest.mark.parametrize("mask_kind", ["none", "ones", "left"])
def test_window_boundary(n: int, mask_kind: str, unsloth_ready: None, model_session: ModelSession) -> None:
    """W-1 back is inside the window, W and W+1 back are outside, in Unsloth as in transformers."""
    config = tiny.tiny_config(num_hidden_layers=1)
    path = tiny.checkpoint(config, init="probe")
    target, golden, baseline = gpu_targets(path, torch.float32, model_session)
    bsz, pads = (2, (3, 0)) if mask_kind == "left" else (1, ())
    ids, mask = tiny.token_batch(target.config, bsz, n, pads=pads, side="left" if pads else "none", seed=n)
    check_window_boundary(
        target, golden, baseline, ids, None if mask_kind == "none" else mask, W, torch.float32
    )
