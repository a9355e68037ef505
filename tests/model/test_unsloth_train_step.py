"""A training step through Unsloth: loss.backward() gradients of the attention weights.

The q/k/v/o projection weights of every layer are made trainable for the step (the rest frozen, as
Unsloth leaves them), Unsloth computes its own loss in training mode, and each weight's gradient is
compared with the eager reference's (float64 golden, same-dtype baseline) under
``tolerance.K_GRAD``: a backward pass sums over every position and row, in an order the kernels
choose, so gradients are allowed twice the forward's factor over the baseline's error.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.model import bound_session
from gemma2_regress.model import tiny
from gemma2_regress.model.cases import ModelCase, budget, gpu_phases, model_cases
from gemma2_regress.model.fast import gpu_targets
from gemma2_regress.model.properties import check_attention_grads

pytestmark = [pytest.mark.gpu, pytest.mark.unsloth]

DTYPE_NAMES = ("float32", "bfloat16", "float16")
PINNED = [
    ModelCase(bsz=2, seq_len=4097, pad_side="right", pads=(0, 9), mode="train", dtype="float32"),
    ModelCase(bsz=1, seq_len=8192, mode="train", dtype="bfloat16", with_mask=False),
]


def train_cases(dtype: str) -> st.SearchStrategy[ModelCase]:
    """Lengths past the window, at most 2 rows (the float64 reference keeps every layer's attention
    matrices for its backward), labels always (the step needs a loss)."""
    return model_cases(dtypes=(dtype,), lengths=(4097, 8192), modes=("train",), max_bsz=2).filter(
        lambda c: c.with_labels
    )


def run(case: ModelCase) -> None:
    path = tiny.checkpoint(init=case.init)
    check_attention_grads(*gpu_targets(path, case.torch_dtype, bound_session()), case)


# One test per dtype: each compiles only its dtype's graphs (a cold backward graph is the tier's
# costliest compile, docs/gpu.md), and xdist spreads them over workers and GPUs.
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@settings(max_examples=budget(0.25 / 3, at_least=2), phases=gpu_phases())
@given(data=st.data())
def test_attention_weight_gradients(dtype: str, data: st.DataObject, unsloth_ready: None) -> None:
    """Gradients of q/k/v/o projection weights after one Unsloth training forward + backward."""
    run(data.draw(train_cases(dtype), label="case"))


@pytest.mark.parametrize("case", PINNED, ids=["b2-L4097-right-float32", "b1-L8192-nomask-bfloat16"])
def test_attention_weight_gradients_pinned(case: ModelCase, unsloth_ready: None) -> None:
    """The pinned training steps above, each its own test."""
    run(case)
