"""The path of the 2024 crash, end to end (issue 3, item 5): evaluation past the window.

``transformers.Trainer.evaluate`` (and TRL's ``SFTTrainer`` where TRL is installed) on Unsloth's
model over an in-memory eval set of 8 rows, all longer than 4096 tokens (4097, 4200, 8192), right-padded
per batch, with ``per_device_eval_batch_size`` 1, 2 and 4. It must not crash (issue #853 crashed
exactly here) and its eval_loss must equal the eager reference's on the same batches.
"""

from __future__ import annotations

import importlib.util

import pytest

from gemma2_regress.kernel.cases import DTYPES
from gemma2_regress.model import tiny
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import check_evaluate
from gemma2_regress.model.session import ModelSession
from gemma2_regress.model.trainer import eval_dataset

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]

KINDS = [
    pytest.param("trainer", id="Trainer"),
    pytest.param(
        "sft",
        id="SFTTrainer",
        marks=pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed"),
    ),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("bsz", [1, 2, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_past_window(
    kind: str, bsz: int, dtype: str, unsloth_ready: None, model_session: ModelSession, tmp_path
) -> None:
    """evaluate() on eval rows of 4097 to 8192 tokens: no crash; eval_loss == the reference's."""
    target, golden, baseline = gpu_targets(tiny.checkpoint(init="large"), DTYPES[dtype], model_session)
    check_evaluate(
        kind, target, golden, baseline, eval_dataset(target.config), bsz, DTYPES[dtype], str(tmp_path)
    )
