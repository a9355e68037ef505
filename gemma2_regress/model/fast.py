"""Unsloth's whole Gemma-2 (``FastLanguageModel``) as a ``ModelTarget``, and the trio the GPU tier compares.

``UnslothTarget`` loads the tiny checkpoint with ``FastLanguageModel.from_pretrained(local_dir,
max_seq_length=..., dtype=..., load_in_4bit=False)`` (through ``unsloth_adapter``, the one door to
Unsloth) with ``HF_HUB_OFFLINE=1``; ``UNSLOTH_RETURN_LOGITS=1`` is set before every call (else Unsloth
returns empty logits when labels are passed). Loaded models are cached per (checkpoint, dtype,
max_seq_length) within a process: loading Unsloth and compiling its kernels is the expensive part of
the GPU tier.

(The file name holds no "unsloth": a crash signature names the innermost frame in a file whose path
contains "unsloth" as Unsloth's own, ``reference.verdicts.signature``.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from gemma2_regress import unsloth_adapter
from gemma2_regress.model.eager import EagerTarget
from gemma2_regress.model.session import ModelSession, Timings
from gemma2_regress.model.targets import Forward, TargetBase

MAX_SEQ_LENGTH = 16384  # the longest sequence the GPU tier runs; Unsloth truncates past it


def unsloth_skip_reason() -> str | None:
    """Why Unsloth's model cannot run here (None if it can): it needs a CUDA GPU and an install."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible: Unsloth's model runs Triton kernels (the GPU tier needs one)"
    if unsloth_adapter.installed_version() is None:
        return "unsloth is not installed in this environment (see docs/gpu.md for the offline bundle)"
    return None


_NO_FORWARD = object()  # the model had no instance-level ``forward`` when it was loaded


@dataclasses.dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    forward: object  # its instance-level ``forward`` after the load, or ``_NO_FORWARD``
    environ: dict[str, str]  # Unsloth's variables after the load, and any other the load changed
    config: dict[str, Any] | None  # its config's attributes after the load (None: it has no config)


_UNSLOTH: dict[tuple[str, torch.dtype, int], _Loaded] = {}


def _set_unsloth_env() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")


def load_unsloth(
    path: str | os.PathLike[str], dtype: torch.dtype, max_seq_length: int, timings: Timings
) -> Any:
    """``(model, tokenizer)`` from ``FastLanguageModel.from_pretrained``, cached per key in this process;
    a load (not the import of Unsloth) adds its seconds to ``timings.load_s``. A cached model is handed out
    as it was loaded, so that neither what a test compiles nor what it computes depends on the tests its
    worker ran before:

    - without the static masks an earlier caller's forwards left on it (``unsloth_adapter.forget_static_masks``):
      Unsloth builds them again, as for a model just loaded;
    - with its ``forward`` as loaded: a ``Trainer`` under mixed precision (Unsloth's trainer patch picks bf16
      for a float32 model) has accelerate's ``prepare_model`` replace it with a bf16 autocast of itself, for
      good, and a later float32 test would have run in bf16 (``_as_loaded``);
    - unmarked by accelerate: ``prepare_model`` marks the model ``_is_accelerate_prepared`` and leaves a
      marked model as it is, so the next test's ``Trainer`` would have run it without the autocast the
      first one's ran it under (which evaluate test came first on a worker decided its precision, and the
      graphs it compiled);
    - with its config's attributes as loaded: a ``Trainer`` sets ``config.use_cache = False`` on the model
      it is given, for every later forward that does not pass ``use_cache``;
    - with Unsloth's environment variables (``UNSLOTH_*``) as they were right after its load, and any other
      variable its load changed, set again: ``from_pretrained`` records the model's precision for the whole
      process (``UNSLOTH_MIXED_PRECISION``, which Unsloth's trainer patch reads to choose between bf16
      autocast and none), so a later load of another dtype would otherwise answer for this model. Only set,
      never removed: a variable Unsloth sets later (once it has patched something) stays."""
    key = (str(Path(path)), dtype, max_seq_length)
    if key not in _UNSLOTH:
        _set_unsloth_env()
        unsloth_adapter.load()  # imports unsloth (before it is asked for anything), or says why not
        before = dict(os.environ)
        t0 = time.perf_counter()
        model, tok = unsloth_adapter.from_pretrained(path, max_seq_length=max_seq_length, dtype=dtype)
        timings.load_s += time.perf_counter() - t0
        environ = {k: v for k, v in os.environ.items() if k.startswith("UNSLOTH_") or before.get(k) != v}
        config = getattr(model, "config", None)
        _UNSLOTH[key] = _Loaded(
            model,
            tok,
            vars(model).get("forward", _NO_FORWARD),
            environ,
            None if config is None else dict(vars(config)),
        )
    loaded = _UNSLOTH[key]
    unsloth_adapter.forget_static_masks(loaded.model)
    _as_loaded(loaded)
    os.environ.update(loaded.environ)
    return loaded.model, loaded.tokenizer


def _as_loaded(loaded: _Loaded) -> None:
    """Put back on ``loaded.model`` the instance-level ``forward`` it had when loaded (none, the class's, for
    ``_NO_FORWARD``) and its config's attributes as they were (added ones dropped; a value changed in
    place inside one, a dict say, stays), and drop accelerate's marks: ``_original_forward`` (of its
    mixed-precision wrapper) and ``_is_accelerate_prepared`` (with it, ``prepare_model`` skips the model)."""
    attrs = vars(loaded.model)
    attrs.pop("_original_forward", None)
    attrs.pop("_is_accelerate_prepared", None)
    if loaded.forward is _NO_FORWARD:
        attrs.pop("forward", None)
    else:
        attrs["forward"] = loaded.forward
    if loaded.config is not None:
        config = vars(loaded.model.config)
        config.clear()
        config.update(loaded.config)


class UnslothTarget(TargetBase):
    """Unsloth's Gemma-2 as ``FastLanguageModel.from_pretrained`` loads it, on the current CUDA device."""

    what = "Unsloth"
    # return_dict explicitly: Unsloth 2026.10.9's one-token decode branch returns a tuple when it is
    # left unset (it resolves the config default only on the other branch).
    cached_step_kwargs: ClassVar[dict[str, Any]] = {"return_dict": True}

    def __init__(
        self,
        path: str | os.PathLike[str],
        dtype: torch.dtype,
        max_seq_length: int = MAX_SEQ_LENGTH,
        *,
        session: ModelSession,
    ) -> None:
        reason = unsloth_skip_reason()
        if reason:
            raise unsloth_adapter.UnslothUnavailable(reason)
        self.path, self.dtype, self.max_seq_length, self.session = Path(path), dtype, max_seq_length, session
        self.model, self.tokenizer = load_unsloth(path, dtype, max_seq_length, session.timings)
        self.device = str(next(self.model.parameters()).device)
        self.name = f"unsloth-{unsloth_adapter.installed_version()}[{str(dtype).removeprefix('torch.')}]"

    def _call(self, **kw: Any) -> Any:
        _set_unsloth_env()
        return super()._call(**kw)

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """Every forward runs Unsloth's training/eval path: ``for_inference``'s marks are dropped first."""
        unsloth_adapter.undo_for_inference(self.model)
        yield

    @contextlib.contextmanager
    def _generating(self) -> Iterator[None]:
        """``generate`` runs after ``FastLanguageModel.for_inference`` (undone afterwards)."""
        unsloth_adapter.for_inference(self.model)
        try:
            yield
        finally:
            unsloth_adapter.undo_for_inference(self.model)
            self.model.eval()

    def _forward_kwargs(self, labels: torch.Tensor | None) -> dict[str, Any]:
        return {} if labels is None else {"labels": labels}  # Unsloth's own loss

    def _forward_result(self, out: Any, labels: torch.Tensor | None, info: dict[str, Any]) -> Forward:
        if out.logits.numel() == 0:
            raise RuntimeError("Unsloth returned empty logits although UNSLOTH_RETURN_LOGITS=1 was set")
        return Forward(out.logits, out.loss, info["seconds"], info["compiled"])

    def _train_step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        extra: Mapping[str, Any],
    ) -> torch.Tensor:
        """One training-mode forward + ``loss.backward()`` (Unsloth's own loss).

        ``enable_input_require_grads`` is on for the step, as PEFT and Unsloth's trainers set it: Unsloth
        loads with its gradient checkpointing armed, and a checkpointed segment whose input needs no
        grad (the embeddings are frozen) would give its weights no gradient at all."""
        unsloth_adapter.undo_for_inference(self.model)
        self.model.enable_input_require_grads()
        self.model.train()
        try:
            with self._timed({}):
                out = self._call(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra)
                out.loss.backward()
        finally:
            self.model.eval()
            self.model.disable_input_require_grads()
        return out.loss


def gpu_targets(
    path: str | os.PathLike[str], dtype: torch.dtype, session: ModelSession
) -> tuple[UnslothTarget, EagerTarget, EagerTarget]:
    """(Unsloth in ``dtype``, golden eager float64, baseline eager ``dtype``), all on the CUDA device and
    all recording into ``session``."""
    return (
        UnslothTarget(path, dtype, session=session),
        EagerTarget(path, torch.float64, "cuda", session=session),
        EagerTarget(path, dtype, "cuda", session=session),
    )
