"""A training step through Unsloth: loss.backward() gradients of the attention weights (issue 3, item 2).

The q/k/v/o projection weights of every layer are made trainable for the step (the rest frozen, as
Unsloth leaves them), Unsloth computes its own loss in training mode, and each weight's gradient is
compared with the eager reference's (float64 golden, same-dtype baseline) under
``tolerance.K_GRAD``: a backward pass sums over every position and row, in an order the kernels
choose, so gradients are allowed twice the forward's factor over the baseline's error.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings

from gemma2_regress import model_targets, tiny
from gemma2_regress.model_cases import ModelCase, budget, gpu_phases, model_cases
from gemma2_regress.model_properties import check_attention_grads

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]

# Lengths past the window, at most 2 rows: the float64 reference keeps every layer's attention
# matrices for its backward.
TRAIN_CASES = model_cases(lengths=(4097, 8192), modes=("train",), max_bsz=2).filter(lambda c: c.with_labels)


@settings(max_examples=budget(0.25, at_least=4), phases=gpu_phases())
@given(case=TRAIN_CASES)
@example(case=ModelCase(bsz=2, seq_len=4097, pad_side="right", pads=(0, 9), mode="train", dtype="float32"))
@example(case=ModelCase(bsz=1, seq_len=8192, mode="train", dtype="bfloat16", with_mask=False))
def test_attention_weight_gradients(case: ModelCase, unsloth_ready: None) -> None:
    """Gradients of q/k/v/o projection weights after one Unsloth training forward + backward."""
    path = tiny.checkpoint(init=case.init)
    check_attention_grads(*model_targets.gpu_targets(path, case.torch_dtype), case)
