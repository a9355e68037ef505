"""A cached Unsloth model is handed out as it was loaded (``model.fast.load_unsloth``), whatever a test before
it did: accelerate's mixed-precision wrapper off its ``forward`` and its mark off the model (the next
``Trainer`` prepares it again), its config's attributes and the variables its load set set again; and each
model-level or trainer test ends with the ``ACCELERATE_*`` variables it began with."""

from __future__ import annotations

import os
import types
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
        layer = torch.nn.Linear(64, 64)
        layer.config = types.SimpleNamespace(use_cache=True)  # what a Trainer changes on a model's config
        return layer, "tokenizer"

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
    float32 model back, and the next prepare must wrap it again."""
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
        # accelerate leaves a model marked _is_accelerate_prepared as it is: the next test's Trainer must
        # run it under the autocast the first one's did, not in float32
        Accelerator(mixed_precision="bf16", cpu=True).prepare_model(again, evaluation_mode=True)
        assert torch.equal(again(x), wrapped)


def test_a_cached_model_comes_back_with_its_config_as_loaded(cache: list[Any], tmp_path: Path) -> None:
    """A ``Trainer`` sets ``config.use_cache = False`` on its model, for every later forward that does not pass
    ``use_cache``; the next test gets the config as loaded, without attributes added since."""
    model, _ = fast.load_unsloth(tmp_path, torch.float32, 64, Timings())
    model.config.use_cache = False
    model.config.added = 1
    again, _ = fast.load_unsloth(tmp_path, torch.float32, 64, Timings())
    assert again is model and vars(again.config) == {"use_cache": True}


@pytest.fixture
def own_environment() -> Iterator[None]:
    """The whole process environment put back after the test (``_accelerate_environment`` keeps only the
    ``ACCELERATE_*`` variables): a ``Trainer`` built after Unsloth's import also sets ``UNSLOTH_RETURN_LOGITS``."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.usefixtures("own_accelerator_state", "own_environment")
def test_two_trainers_evaluate_the_cached_model_in_one_precision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two evaluate tests on one cached float32 model, each with its own ``Trainer`` under bf16 mixed precision
    (Unsloth's trainer patch picks it for a float32 model): the second must run the model under the same
    autocast as the first and get the same eval_loss, whichever test came first on the worker."""
    from transformers import Gemma2ForCausalLM, Trainer, TrainingArguments

    from gemma2_regress.model import tiny
    from gemma2_regress.model.trainer import RightPadCollator, eval_dataset

    torch.manual_seed(0)
    loaded = Gemma2ForCausalLM(tiny.tiny_config(num_hidden_layers=2)).eval()
    monkeypatch.setattr(unsloth_adapter, "load", lambda: None)
    monkeypatch.setattr(unsloth_adapter, "from_pretrained", lambda path, **kw: (loaded, None))
    monkeypatch.setattr(fast, "_UNSLOTH", {})

    def eval_loss() -> float:
        model, _ = fast.load_unsloth(tmp_path, torch.float32, 64, Timings())
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            per_device_eval_batch_size=2,
            report_to="none",
            remove_unused_columns=False,
            prediction_loss_only=True,
            dataloader_num_workers=0,
            use_cpu=True,
            bf16=True,
        )
        rows = eval_dataset(model.config, [40, 33, 40, 17])
        collator = RightPadCollator(model.config.pad_token_id)
        return Trainer(model=model, args=args, eval_dataset=rows, data_collator=collator).evaluate()[
            "eval_loss"
        ]

    first = eval_loss()
    assert eval_loss() == first


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
