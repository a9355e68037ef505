"""The static masks Unsloth keeps on a loaded model are dropped whenever ``model.fast.load_unsloth`` hands
out its cached model (``unsloth_adapter.forget_static_masks``): a test's forwards build them again as in a
model just loaded, whatever the worker ran before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gemma2_regress import unsloth_adapter
from gemma2_regress.model import fast
from gemma2_regress.model.session import Timings


class _Inner(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kept_buffer", torch.zeros(2))


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = _Inner()


def _masks_of(model: torch.nn.Module) -> dict[str, Any]:
    return {n: vars(m)[n] for m in model.modules() for n in unsloth_adapter.STATIC_MASKS if n in vars(m)}


def test_a_mask_built_under_inference_mode_is_not_a_view() -> None:
    # The premise (docs/gpu.md): Unsloth's static masks are .squeeze(0).squeeze(0) of a 4-D mask, a view,
    # except when the first forward that builds them runs under generate's inference_mode.
    with torch.inference_mode():
        built_in_generate = torch.zeros(1, 1, 4, 4).squeeze(0).squeeze(0)
    with torch.no_grad():
        built_in_eval = torch.zeros(1, 1, 4, 4).squeeze(0).squeeze(0)
    assert built_in_eval._is_view() and not built_in_generate._is_view()


def test_forget_static_masks_drops_only_them() -> None:
    model = _Model()
    model.model.SWA_mask, model.model.GA_mask, model.model.other = torch.ones(2), torch.ones(2), 1
    unsloth_adapter.forget_static_masks(model)
    assert _masks_of(model) == {}
    assert model.model.other == 1 and "model.kept_buffer" in dict(model.named_buffers())
    unsloth_adapter.forget_static_masks(model)  # none left: nothing to do


def test_the_cached_model_comes_back_without_the_masks_a_caller_left(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loads: list[Any] = []

    def from_pretrained(path: Any, **kw: Any) -> tuple[torch.nn.Module, str]:
        loads.append(path)
        return _Model(), "tokenizer"

    monkeypatch.setattr(unsloth_adapter, "load", lambda: None)
    monkeypatch.setattr(unsloth_adapter, "from_pretrained", from_pretrained)
    monkeypatch.setattr(fast, "_UNSLOTH", {})
    model, _ = fast.load_unsloth(tmp_path, torch.float32, 64, Timings())
    model.model.SWA_mask, model.model.GA_mask = True, False  # as the flash path's sentinels, or tensors
    again, _ = fast.load_unsloth(tmp_path, torch.float32, 64, Timings())
    assert again is model and len(loads) == 1  # still cached
    assert _masks_of(again) == {}
