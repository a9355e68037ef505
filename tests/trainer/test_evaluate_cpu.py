"""The evaluation harness validated on CPU: Trainer/SFTTrainer.evaluate on transformers' eager model
(16-token window, rows past it) gives the eval_loss ``trainer_eval.reference_eval_loss`` computes.

This checks the harness (collator, labels, the evaluation_loop's averaging) where it is cheap; the
GPU tier runs the same ``check_evaluate`` with Unsloth's model at the real 4096 window.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma2_regress.model import tiny
from gemma2_regress.model.cases import budget
from gemma2_regress.model.eager import EagerTarget
from gemma2_regress.model.properties import check_evaluate
from gemma2_regress.model.session import ModelSession
from gemma2_regress.model.trainer import eval_dataset, eval_lengths

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
@settings(max_examples=budget(1 / 40))  # as the GPU tier's evaluate test
@given(data=st.data())
def test_evaluate_harness(
    kind: str, bsz: int, data: st.DataObject, tmp_path_factory, model_session: ModelSession
) -> None:
    """Rows under, at and past the 16-token window, drawn per row in dataset order."""
    lengths = data.draw(eval_lengths(bsz, lengths=(17, 9, 16, 35, 60)), label="row lengths")
    path = tiny.checkpoint(tiny.tiny_config(sliding_window=16), init="large")
    twin = EagerTarget(path, torch.float32, session=model_session)
    golden = EagerTarget(path, torch.float64, session=model_session)
    data_set = eval_dataset(twin.config, lengths=lengths)
    out = str(tmp_path_factory.mktemp("evaluate"))
    check_evaluate(kind, twin, golden, twin, data_set, bsz, torch.float32, out)
