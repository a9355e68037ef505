"""The path of the 2024 crash, end to end (issue 3, item 5): evaluation past the window.

``transformers.Trainer.evaluate`` (and TRL's ``SFTTrainer`` where TRL is installed) on Unsloth's
model over an in-memory eval set of 8 rows, all longer than 4096 tokens (each 4097, 4200 or 8192,
drawn per row in dataset order; at 2 and 4 rows a batch, some batch has its longest row after a
shorter one), right-padded per batch, with ``per_device_eval_batch_size`` 1, 2 and 4. It must not
crash (issue #853 crashed exactly here) and its eval_loss must equal the eager reference's on the
same batches.
"""

from __future__ import annotations

import importlib.util

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma2_regress.kernel.cases import DTYPES
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import budget, gpu_phases
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import check_evaluate
from gemma2_regress.model.session import ModelSession
from gemma2_regress.model.trainer import eval_dataset, eval_lengths

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
# One drawn eval set per test in the gpu profile (as many evaluate() calls as one fixed set took).
@settings(max_examples=budget(1 / 40), phases=gpu_phases())
@given(data=st.data())
def test_evaluate_past_window(
    kind: str,
    bsz: int,
    dtype: str,
    data: st.DataObject,
    unsloth_ready: None,
    model_session: ModelSession,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """evaluate() on eval rows of 4097 to 8192 tokens: no crash; eval_loss == the reference's."""
    lengths = data.draw(eval_lengths(bsz), label="row lengths")
    target, golden, baseline = gpu_targets(tiny.checkpoint(init="large"), DTYPES[dtype], model_session)
    dataset = eval_dataset(target.config, lengths)
    out = str(tmp_path_factory.mktemp("evaluate"))
    check_evaluate(kind, target, golden, baseline, dataset, bsz, DTYPES[dtype], out)
