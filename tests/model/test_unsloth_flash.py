"""Unsloth's flash-attn path, where flash-attn with softcapping is importable.

Dispatch (``Gemma2Attention_fast_forward``): flash-attn iff ``HAS_FLASH_ATTENTION_SOFTCAPPING`` and
no attention_mask reaches the layer; an unpadded batch's all-ones mask is dropped (flash), a padded
batch keeps its mask and goes through the slow path, which is the path of the 2024 crash: with
flash-attn installed the sliding layers' ``causal_mask`` is the bool ``True`` sentinel, and an
evaluation longer than the window with an attention_mask must still reach the slow kernel with a
real 4-D mask. Skipped, with the reason, where flash-attn (>= 2.6, the release with softcapping)
is not importable.
"""

from __future__ import annotations

import pytest

from gemma2_regress import unsloth_adapter
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import check_evaluate, check_logits_and_loss
from gemma2_regress.model.session import ModelSession
from gemma2_regress.model.trainer import eval_dataset

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]


@pytest.fixture
def flash_ready(unsloth_ready: None) -> None:
    u = unsloth_adapter.load()
    if not getattr(u.gemma2_module, "HAS_FLASH_ATTENTION_SOFTCAPPING", False):
        try:
            import flash_attn

            why = f"flash_attn {getattr(flash_attn, '__version__', '?')} is importable but Unsloth found no softcapping in it"
        except ImportError as exc:
            why = f"flash_attn is not importable ({exc}); install flash-attn>=2.6 for the flash path"
        pytest.skip(f"Unsloth's flash-attn path is off here: {why}")


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
]


@pytest.mark.parametrize("case", FLASH_CASES)
def test_flash_path_logits_and_loss(case: ModelCase, flash_ready: None, model_session: ModelSession) -> None:
    """Logits and loss with flash-attn installed, on the flash path and on the slow path it falls back to."""
    path = tiny.checkpoint(init=case.init)
    check_logits_and_loss(*gpu_targets(path, case.torch_dtype, model_session), case)


@pytest.mark.parametrize("bsz", [1, 2, 4])
def test_flash_evaluate_past_window(
    bsz: int, flash_ready: None, model_session: ModelSession, tmp_path
) -> None:
    """Trainer.evaluate with flash-attn installed, padded batches past the window: no crash, right loss."""
    import torch

    target, golden, baseline = gpu_targets(tiny.checkpoint(init="large"), torch.bfloat16, model_session)
    check_evaluate(
        "trainer", target, golden, baseline, eval_dataset(target.config), bsz, torch.bfloat16, str(tmp_path)
    )
