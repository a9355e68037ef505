"""The eager twin: transformers' eager ``Gemma2ForCausalLM`` as a ``ModelTarget`` (the reference).

In float64 it is the golden reference, in the target's dtype the baseline of the tolerance rule; on CPU
it also stands in for Unsloth when the properties themselves are validated. Loaded models are cached
per (checkpoint, dtype, device) within a process.

The twin must run genuine transformers code even after Unsloth patched transformers' Gemma-2 module
(``FastGemma2Model.pre_patch`` replaces class methods, ``Gemma2Attention.__init__`` and the module
global ``Gemma2RotaryEmbedding``). Unsloth records what it replaced in
``modeling_gemma2._unsloth_pre_patch_originals``; ``pristine_transformers`` puts those originals back
while the twin is built and run, and ``EagerTarget`` checks that none of its modules is marked for
Unsloth's fast path.
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


@contextlib.contextmanager
def pristine_transformers() -> Iterator[None]:
    """Within the block, transformers' Gemma-2 module holds its own code, not Unsloth's patches.

    A no-op where Unsloth never patched it (not imported, or no model loaded yet).
    """
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
