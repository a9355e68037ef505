"""A cached Unsloth model is handed out as it was loaded (``model.fast.load_unsloth``), whatever a test before
it did: accelerate's mixed-precision wrapper off its ``forward``, the variables its load set set again; and
each model-level or trainer test ends with the ``ACCELERATE_*`` variables it began with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gemma2_regress import unsloth_adapter
from gemma2_regress.model import fast
from gemma2_regress.model.session import Timings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """An empty model cache whose loads make a float32 linear layer and set a variable, as Unsloth's do."""
    loads: list[Any] = []

    def from_pretrained(path: Any, dtype: torch.dtype, **kw: Any) -> tuple[torch.nn.Module, str]:
        loads.append(dtype)
        # as unsloth_zoo's prepare_model_for_training: float16 and float32 models train in float32
        os.environ["UNSLOTH_MIXED_PRECISION"] = "bfloat16" if dtype == torch.bfloat16 else "float32"
        return torch.nn.Linear(64, 64), "tokenizer"

    monkeypatch.setattr(unsloth_adapter, "load", lambda: None)
    monkeypatch.setattr(unsloth_adapter, "from_pretrained", from_pretrained)
    monkeypatch.setattr(fast, "_UNSLOTH", {})
    monkeypatch.delenv("UNSLOTH_MIXED_PRECISION", raising=False)
    return loads


@pytest.fixture
def own_accelerator_state() -> Iterator[None]:
    """accelerate's process-wide state emptied for the test and put back after it: an ``Accelerator`` of another
    mixed precision than one made earlier in the worker (by a Trainer test) raises ("AcceleratorState has
    already been initialized"), so the test failed or passed by what ran before it in its worker."""
    from accelerate.state import AcceleratorState, PartialState

    saved = [(cls, dict(cls._shared_state)) for cls in (AcceleratorState, PartialState)]
    for cls, _ in saved:
        cls._shared_state.clear()
    try:
        yield
    finally:
        for cls, state in saved:
            cls._shared_state.clear()
            cls._shared_state.update(state)


@pytest.mark.usefixtures("own_accelerator_state")
def test_a_trainers_bf16_autocast_does_not_stay_on_the_cached_model(cache: list[Any], tmp_path: Path) -> None:
    """accelerate's ``prepare_model`` under bf16 (what a Trainer does when Unsloth picks mixed precision for a
    float32 model) replaces the model's ``forward`` with a bf16 autocast of it; the next test must get the
    float32 model back."""
    from accelerate import Accelerator

    model, _ = fast.load_unsloth(tmp_path, torch.float32, 64, Timings())
    x = torch.randn(8, 64)
    with torch.no_grad():
        exact = model(x)
        Accelerator(mixed_precision="bf16", cpu=True).prepare_model(model, evaluation_mode=True)
        wrapped = model(x)
        assert "forward" in vars(model) and not torch.equal(wrapped, exact)  # the premise: it ran in bf16
        again, _ = fast.load_unsloth(tmp_path, torch.float32, 64, Timings())
        assert again is model and len(cache) == 1  # still the cached model
        assert "forward" not in vars(again) and "_original_forward" not in vars(again)
        assert torch.equal(again(x), exact)


def test_a_cached_model_comes_back_with_unsloths_variables_as_after_its_load(
    cache: list[Any], tmp_path: Path
) -> None:
    fast.load_unsloth(tmp_path / "half", torch.float16, 64, Timings())
    fast.load_unsloth(tmp_path / "full", torch.float32, 64, Timings())  # sets the same value again
    fast.load_unsloth(tmp_path / "brain", torch.bfloat16, 64, Timings())  # a later load, process-wide
    assert os.environ["UNSLOTH_MIXED_PRECISION"] == "bfloat16"
    fast.load_unsloth(tmp_path / "full", torch.float32, 64, Timings())
    assert os.environ["UNSLOTH_MIXED_PRECISION"] == "float32" and len(cache) == 3


LEAKY = """
import os

def test_sets_it():
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    os.environ["ACCELERATE_USE_CPU"] = "true"

def test_after_it():
    assert os.environ.get("ACCELERATE_MIXED_PRECISION") == "no"
    assert "ACCELERATE_USE_CPU" not in os.environ
"""


def test_a_tests_accelerate_variables_end_with_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest("from fixtures.model import _accelerate_environment\n")
    pytester.makepyfile(test_leaky=LEAKY)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", timeout=120)
    result.assert_outcomes(passed=2)
