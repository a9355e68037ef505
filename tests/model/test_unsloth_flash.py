"""Unsloth's flash-attn path on a GPU, with flash-attn's reference stand-in where no real flash-attn is
installed (``unsloth_flash.flash_path(u, "cuda")``; docs/flash.md).

Dispatch (``Gemma2Attention_fast_forward``): flash-attn iff ``HAS_FLASH_ATTENTION_SOFTCAPPING`` and
no attention_mask reaches the layer; an unpadded batch's all-ones mask is dropped (flash), a padded
batch keeps its mask and goes through the slow path, which is the path of the 2024 crash: with
flash-attn installed the sliding layers' ``causal_mask`` is the bool ``True`` sentinel, and an
evaluation longer than the window with an attention_mask must still reach the slow kernel with a
real 4-D mask. In training Unsloth drops the mask (right padding) and takes flash. Every call Unsloth
makes to flash-attn is recorded, and which path ran is asserted. Skipped, with the reason, only where
the flash path cannot be given (a GPU below capability 8, where Unsloth never takes it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gemma2_regress import unsloth_adapter, unsloth_flash
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import check_evaluate, check_logits_and_loss
from gemma2_regress.model.session import ModelSession
from gemma2_regress.model.trainer import EVAL_LENGTHS, eval_dataset

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]

FlashBlock = Callable[..., contextlib.AbstractContextManager[list[unsloth_flash.FlashCall]]]


@pytest.fixture
def flash(unsloth_ready: None) -> FlashBlock:
    """``flash(*models)``: a block on Unsloth's flash path on this GPU (``unsloth_flash.flash_path(u, "cuda")``, which
    puts ``models``' per-forward masks back afterwards) that yields the list of flash-attn calls made in it."""
    u = unsloth_adapter.load()
    reason = unsloth_flash.flash_path_unavailable(u, "cuda")
    if reason is not None:
        pytest.skip(f"Unsloth's flash-attn path cannot be given here: {reason}")

    @contextlib.contextmanager
    def block(*models: Any) -> Iterator[list[unsloth_flash.FlashCall]]:
        with (
            unsloth_flash.flash_path(u, "cuda", models=models),
            unsloth_flash.recording_flash_calls(u) as calls,
        ):
            yield calls

    return block


def assert_flash_layers(calls: list[unsloth_flash.FlashCall], config: Any, seq_len: int) -> None:
    """Every call is flash_attn_func with the config's cap; the sliding layers' window keeps W keys."""
    assert calls, "no flash-attn call: the flash path was not taken"
    w = config.sliding_window
    want_windows = {(-1, -1), (w - 1, 0) if seq_len > w else (-1, -1)}
    got = {(c.function, c.softcap, c.causal) for c in calls}
    assert got == {("flash_attn_func", config.attn_logit_softcapping, True)}, calls
    assert {tuple(c.window_size) for c in calls} == want_windows, calls


FLASH_CASES = [
    pytest.param(ModelCase(bsz=1, seq_len=8192, with_mask=False, dtype="bfloat16"), id="flash-no-mask-8192"),
    pytest.param(
        ModelCase(bsz=2, seq_len=4200, with_mask=True, dtype="bfloat16"), id="flash-all-ones-mask-4200"
    ),
    pytest.param(
        ModelCase(bsz=2, seq_len=4200, pad_side="left", pads=(7, 0), dtype="bfloat16", seed=853),
        id="slow-path-2024-crash-4200",
    ),
    pytest.param(
        ModelCase(bsz=2, seq_len=8192, pad_side="right", pads=(0, 100), mode="train", dtype="float16"),
        id="train-mask-dropped-flash-8192",
    ),
    # A float32 model: flash-attn takes only fp16/bf16, so Unsloth must cast around it (known issue).
    pytest.param(ModelCase(bsz=1, seq_len=4200, with_mask=False, dtype="float32"), id="flash-float32-4200"),
]


@pytest.mark.parametrize("case", FLASH_CASES)
def test_flash_path_logits_and_loss(case: ModelCase, flash: FlashBlock, model_session: ModelSession) -> None:
    """Logits and loss on Unsloth's flash path, and on the slow path a padded evaluation batch falls back to."""
    target, golden, baseline = gpu_targets(tiny.checkpoint(init=case.init), case.torch_dtype, model_session)
    with flash(target.model) as calls:
        check_logits_and_loss(target, golden, baseline, case)
    if case.padded and case.mode == "eval":
        assert calls == [], f"a padded evaluation batch reached flash-attn: {calls[:2]}"
    else:
        assert_flash_layers(calls, target.config, case.seq_len)


@pytest.mark.parametrize("bsz", [1, 2, 4])
def test_flash_evaluate_past_window(
    bsz: int, flash: FlashBlock, model_session: ModelSession, tmp_path
) -> None:
    """Trainer.evaluate on the flash path, padded batches past the window: no crash, right loss (unpadded
    batches of one take flash-attn; padded ones the slow path)."""
    import torch

    target, golden, baseline = gpu_targets(tiny.checkpoint(init="large"), torch.bfloat16, model_session)
    with flash(target.model) as calls:
        check_evaluate(
            "trainer",
            target,
            golden,
            baseline,
            eval_dataset(target.config),
            bsz,
            torch.bfloat16,
            str(tmp_path),
        )
    if bsz == 1:
        assert_flash_layers(calls, target.config, min(EVAL_LENGTHS))
