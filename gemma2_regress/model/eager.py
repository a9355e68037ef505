"""The eager twin: transformers' eager ``Gemma2ForCausalLM`` as a ``ModelTarget`` (the reference).

In float64 it is the golden reference, in the target's dtype the baseline of the tolerance rule; on CPU
it also stands in for Unsloth when the properties themselves are validated. Loaded models are cached
per (checkpoint, dtype, device) within a process.

The twin must run genuine transformers code even after Unsloth patched transformers, or the golden
reference would share code with the target. Two kinds of patch reach it:

- ``FastGemma2Model.pre_patch`` replaces class methods of transformers' Gemma-2 module,
  ``Gemma2Attention.__init__`` and the module global ``Gemma2RotaryEmbedding``; Unsloth records what it
  replaced in ``modeling_gemma2._unsloth_pre_patch_originals``.
- ``import unsloth`` replaces transformers' mask builders (``transformers.masking_utils``):
  ``create_causal_mask`` and ``create_sliding_window_causal_mask`` by ``torch.compile``d wrappers, the
  padding / packing / offset mask functions and ``create_masks_for_generate`` by wrappers, each original
  kept as ``masking_utils._unsloth_original_<name>``; and, where its probe finds that transformers' own
  leaves a query that sees no key fully masked, ``sdpa_mask`` (which ``eager_mask`` calls) by a wrapper
  marked ``_unsloth_patched_sdpa_mask`` whose ``__wrapped__`` is the original. Modules that
  imported a builder by name (``modeling_gemma2``, ``generation.utils``) hold the wrapper too.

``pristine_transformers`` puts every such original back while the twin is built and run (and Unsloth's
versions back after), and ``EagerTarget`` checks that none of its modules is marked for Unsloth's fast
path. The twin then also compiles nothing (Unsloth's compiled mask builders made each of its first calls
at a new batch shape wait on Dynamo: docs/gpu.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from gemma2_regress import unsloth_adapter
from gemma2_regress.model import tiny
from gemma2_regress.model.session import ModelSession
from gemma2_regress.model.targets import Forward, TargetBase

ORIGINAL_PREFIX = "_unsloth_original_"  # unsloth_zoo's name for a mask builder it replaced
PATCH_MARK_PREFIX = "_unsloth_patched"  # Unsloth's mark on a wrapper whose __wrapped__ is the original


def mask_patches() -> list[tuple[dict[str, Any], str, Any, Any]]:
    """``(namespace, key, Unsloth's object, transformers' original)`` for every place that holds one of
    Unsloth's replacements of transformers' mask builders (module docstring): the globals of each loaded
    ``transformers`` module and the mask registry's mappings. Empty where Unsloth patched none."""
    mu = sys.modules.get("transformers.masking_utils")
    if mu is None:
        return []
    originals: dict[int, tuple[Any, Any]] = {}  # id(Unsloth's object) -> (it, the original)
    for name, value in list(vars(mu).items()):
        patched = (
            vars(mu).get(name.removeprefix(ORIGINAL_PREFIX)) if name.startswith(ORIGINAL_PREFIX) else None
        )
        if patched is not None and patched is not value:
            originals[id(patched)] = (patched, value)
        marked = any(k.startswith(PATCH_MARK_PREFIX) for k in getattr(value, "__dict__", {}))
        if marked and callable(value) and getattr(value, "__wrapped__", None) is not None:
            originals[id(value)] = (value, value.__wrapped__)
    if not originals:
        return []
    home = os.path.dirname(vars(mu)["__file__"]) + os.sep  # transformers' own folder
    originals = {
        k: (patched, _transformers_own(original, home)) for k, (patched, original) in originals.items()
    }
    spaces = [vars(m) for n, m in list(sys.modules.items()) if n.split(".")[0] == "transformers" and m]
    spaces += _registry_mappings(vars(mu).get("ALL_MASK_ATTENTION_FUNCTIONS"))
    return [
        (space, key, value, originals[id(value)][1])
        for space in spaces
        for key, value in list(space.items())
        if id(value) in originals and originals[id(value)][0] is value
    ]


def _transformers_own(fn: Any, home: str) -> Any:
    """``fn``, or the first function down its ``__wrapped__`` chain whose code lives under ``home``: an
    original Unsloth kept can itself be an earlier Unsloth wrapper (``unsloth.import_fixes``)."""
    found = fn
    while not getattr(getattr(found, "__code__", None), "co_filename", "").startswith(home):
        found = getattr(found, "__wrapped__", None)
        if found is None:
            return fn
    return found


def _registry_mappings(registry: Any) -> list[dict[str, Any]]:
    """The dicts behind transformers' mask registry (``register`` writes the class-wide one)."""
    if registry is None:
        return []
    found = (vars(type(registry)).get("_global_mapping"), vars(registry).get("_local_mapping"))
    return [d for d in found if isinstance(d, dict)]


@contextlib.contextmanager
def pristine_transformers() -> Iterator[None]:
    """Within the block, transformers holds its own code where Unsloth patched it: the Gemma-2 module
    (``_unsloth_pre_patch_originals``) and the mask builders (``mask_patches``). Unsloth's versions are
    put back after.

    A no-op where Unsloth never patched them (not imported, or no model loaded yet).
    """
    masks = mask_patches()
    for space, key, _, original in masks:
        space[key] = original
    try:
        with _pristine_gemma2():
            yield
    finally:
        for space, key, patched, _ in masks:
            space[key] = patched


@contextlib.contextmanager
def _pristine_gemma2() -> Iterator[None]:
    """Within the block, transformers' Gemma-2 module holds what ``FastGemma2Model.pre_patch`` replaced."""
    mod = sys.modules.get("transformers.models.gemma2.modeling_gemma2")
    record = vars(mod).get("_unsloth_pre_patch_originals") if mod is not None else None
    if record is None:
        yield
        return
    changed_globals, changed_attrs = record
    missing = unsloth_adapter.pre_patch_sentinels()
    absent = object()
    saved_g = {name: vars(mod).get(name, absent) for name in changed_globals}
    saved_a = {key: vars(key[0]).get(key[1], absent) for key in changed_attrs}

    def put(owner: Any, name: str, value: Any) -> None:
        if value is absent or any(value is m for m in missing):
            if name in vars(owner):
                delattr(owner, name)
        else:
            setattr(owner, name, value)

    try:
        for name, value in changed_globals.items():
            put(mod, name, value)
        for (cls, name), value in changed_attrs.items():
            put(cls, name, value)
        yield
    finally:
        for name, value in saved_g.items():
            put(mod, name, value)
        for (cls, name), value in saved_a.items():
            put(cls, name, value)


_EAGER: dict[tuple[str, torch.dtype, str], Any] = {}


class EagerTarget(TargetBase):
    """transformers' eager Gemma-2 on ``device`` in ``dtype``: golden (float64) or baseline."""

    reference = True
    what = "transformers' eager model"

    def __init__(
        self, path: str | os.PathLike[str], dtype: torch.dtype, device: str = "cpu", *, session: ModelSession
    ) -> None:
        self.path, self.dtype, self.device, self.session = Path(path), dtype, device, session
        self.name = f"transformers-eager[{str(dtype).removeprefix('torch.')}]"
        key = (str(self.path), dtype, device)
        if key not in _EAGER:
            with pristine_transformers():
                _EAGER[key] = tiny.load_transformers(self.path, dtype=dtype, device=device)
        self.model = _EAGER[key]
        marked = [n for n, m in self.model.named_modules() if getattr(m, "_unsloth_fast_path", False)]
        if marked or self.model.config._attn_implementation != "eager":
            raise RuntimeError(
                f"the eager twin is not plain transformers (unsloth-marked modules {marked[:3]}, "
                f"attention {self.model.config._attn_implementation!r}); load it with EagerTarget only"
            )

    @property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path))

    def _scope(self) -> contextlib.AbstractContextManager[Any]:
        return pristine_transformers()

    def _forward_kwargs(self, labels: torch.Tensor | None) -> dict[str, Any]:
        return {"use_cache": False}  # the loss is written out (reference_loss), not the model's

    def _forward_result(self, out: Any, labels: torch.Tensor | None, info: dict[str, Any]) -> Forward:
        loss = None if labels is None else reference_loss(out.logits, labels.to(self.device), self.dtype)
        return Forward(out.logits, loss, info["seconds"], info["compiled"])

    def _train_step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        extra: Mapping[str, Any],
    ) -> torch.Tensor:
        loss = self.forward(input_ids, attention_mask, labels, mode="train", grad=True, extra=extra).loss
        with pristine_transformers():
            loss.backward()
        return loss

    def _rowwise(self, attention_mask: torch.Tensor | None) -> bool:
        """float64 eager turns a query that may see no real key into NaN: its softmax runs in float32,
        where ``finfo(float64).min`` is -inf. Such queries are pads (a left pad; a right pad more than a
        window past the last real token), and the NaN reaches every position of the row through the
        next layer (``0 * NaN`` in ``weights @ V``). So in float64 every padded row runs alone, unpadded."""
        return self.dtype == torch.float64 and attention_mask is not None and not bool(attention_mask.all())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        mode: str = "eval",
        grad: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> Forward:
        if self._rowwise(attention_mask):
            if extra:
                raise ValueError("a padded float64 batch runs row by row: pass no extra arguments with it")
            return self._forward_rows(input_ids, attention_mask, labels, mode=mode, grad=grad)
        return super().forward(input_ids, attention_mask, labels, mode=mode, grad=grad, extra=extra)

    def _forward_rows(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        *,
        mode: str,
        grad: bool,
    ) -> Forward:
        """Each row alone without its pads (real tokens must be contiguous); logits are put back at
        their padded positions, zeros at pads; the loss is taken over the reassembled logits."""
        rows, seconds, compiled = [], 0.0, False
        for b in range(input_ids.shape[0]):
            real = attention_mask[b].bool()
            logits = torch.zeros(
                input_ids.shape[1], self.config.vocab_size, dtype=self.dtype, device=self.device
            )
            if real.any():
                idx = real.nonzero().flatten()
                if int(idx[-1] - idx[0]) + 1 != idx.numel():
                    raise ValueError(
                        "row-wise reference needs contiguous real tokens (left or right padding)"
                    )
                out = self.forward(input_ids[b : b + 1, real], None, mode=mode, grad=grad)
                logits[idx.to(self.device)] = out.logits[0]
                seconds, compiled = seconds + out.seconds, compiled or out.compiled
            rows.append(logits)
        logits = torch.stack(rows)
        loss = None if labels is None else reference_loss(logits, labels.to(self.device), self.dtype)
        return Forward(logits, loss, seconds, compiled)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rowwise(attention_mask):  # see _rowwise: each row alone, without its (left) pads
            parts = [
                self.generate(input_ids[b : b + 1, attention_mask[b].bool()], None, max_new_tokens)
                for b in range(input_ids.shape[0])
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return super().generate(input_ids, attention_mask, max_new_tokens)


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal-LM loss written out: mean cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]``
    over labels != -100, computed in float64 for a float64 model and in float32 otherwise (the
    upcast transformers' own loss does)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    shift_logits = logits[:, :-1].to(acc).reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
