"""The evaluation harness validated on CPU: Trainer/SFTTrainer.evaluate on transformers' eager model
(16-token window, rows past it) gives the eval_loss ``trainer_eval.reference_eval_loss`` computes.

This checks the harness (collator, labels, the evaluation_loop's averaging) where it is cheap; the
GPU tier runs the same ``check_evaluate`` with Unsloth's model at the real 4096 window.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from gemma2_regress.model import tiny
from gemma2_regress.model.eager import EagerTarget
from gemma2_regress.model.properties import check_evaluate
from gemma2_regress.model.session import ModelSession
from gemma2_regress.model.trainer import eval_dataset

KINDS = [
    pytest.param("trainer", id="Trainer"),
    pytest.param(
        "sft",
        id="SFTTrainer",
        marks=[
            pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed"),
            pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="trl's SFTTrainer computes its loss with a Triton kernel (trl/kernels/chunked_logprob.py): GPU only",
            ),
        ],
    ),
]


@pytest.mark.parametrize("bsz", [1, 2, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_harness(kind: str, bsz: int, tmp_path, model_session: ModelSession) -> None:
    path = tiny.checkpoint(tiny.tiny_config(sliding_window=16), init="large")
    twin = EagerTarget(path, torch.float32, session=model_session)
    golden = EagerTarget(path, torch.float64, session=model_session)
    data = eval_dataset(twin.config, lengths=(20, 35, 17, 50, 16, 40, 9, 60))
    check_evaluate(kind, twin, golden, twin, data, bsz, torch.float32, str(tmp_path))
