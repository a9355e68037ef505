"""Model-level targets: Unsloth's whole Gemma-2 and its eager transformers twin, behind one interface.

A ``ModelTarget`` runs a tiny checkpoint (``gemma2_regress.model.tiny``) the way a user does and returns
logits, loss, a cached continuation, greedy generations or attention-weight gradients:

- ``UnslothTarget``  ``FastLanguageModel.from_pretrained(local_dir, max_seq_length=..., dtype=...,
                     load_in_4bit=False)`` with ``HF_HUB_OFFLINE=1``; ``UNSLOTH_RETURN_LOGITS=1`` is
                     set before every call that passes labels (else Unsloth returns empty logits).
- ``EagerTarget``    transformers' eager ``Gemma2ForCausalLM`` (``tiny.load_transformers``). In
                     float64 it is the golden reference, in the target's dtype the baseline of the
                     tolerance rule.

Both are cached per (checkpoint, dtype, max_seq_length / device) within a process: loading Unsloth
and compiling its kernels is the expensive part of the GPU tier.

The eager twin must run genuine transformers code even after Unsloth patched transformers'
Gemma-2 module (``FastGemma2Model.pre_patch`` replaces class methods, ``Gemma2Attention.__init__``
and the module global ``Gemma2RotaryEmbedding``). Unsloth records what it replaced in
``modeling_gemma2._unsloth_pre_patch_originals``; ``pristine_transformers`` puts those originals
back while the twin is built and run, and ``EagerTarget`` checks that none of its modules is
marked for Unsloth's fast path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gemma2_regress import unsloth_adapter
from gemma2_regress.model import tiny

MAX_SEQ_LENGTH = 16384  # the longest sequence the GPU tier runs; Unsloth truncates past it
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclasses.dataclass
class Forward:
    """One forward: logits ``(bsz, seq, vocab)`` (final softcap applied), loss (scalar or None)."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    seconds: float
    compiled: bool  # did torch.compile build a new graph during this call (a compile, not a run)


@dataclasses.dataclass
class Timings:
    """Where the GPU tier's time goes: target (Unsloth) calls that compiled a graph vs calls that only
    ran, the eager reference's calls, and loading."""

    compile_s: float = 0.0
    run_s: float = 0.0
    compile_calls: int = 0
    run_calls: int = 0
    reference_s: float = 0.0
    load_s: float = 0.0

    def add(self, seconds: float, compiled: bool, reference: bool = False) -> None:
        if reference:
            self.reference_s += seconds
        elif compiled:
            self.compile_s += seconds
            self.compile_calls += 1
        else:
            self.run_s += seconds
            self.run_calls += 1


TIMINGS = Timings()


def _graphs() -> int:
    """How many graphs torch.compile has built so far in this process (0 if unknown)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return 0


@contextlib.contextmanager
def timed(out: dict[str, Any], reference: bool = False) -> Iterator[None]:
    """Time a block (synchronising CUDA) and note whether it compiled; adds to ``TIMINGS`` (to the
    reference's share with ``reference=True``)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    g0, t0 = _graphs(), time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - t0
    out["compiled"] = _graphs() > g0
    TIMINGS.add(out["seconds"], out["compiled"], reference)


# --- the eager twin --------------------------------------------------------------------------------


def _missing_sentinels() -> tuple[object, ...]:
    mod = sys.modules.get("unsloth.models.llama")
    return (mod._MISSING,) if mod is not None and hasattr(mod, "_MISSING") else ()


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
    missing = _missing_sentinels()
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


class EagerTarget:
    """transformers' eager Gemma-2 on ``device`` in ``dtype``: golden (float64) or baseline."""

    def __init__(self, path: str | os.PathLike[str], dtype: torch.dtype, device: str = "cpu") -> None:
        self.path, self.dtype, self.device = Path(path), dtype, device
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
    def config(self) -> Any:
        return self.model.config

    @property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path))

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
    ) -> Forward:
        if self._rowwise(attention_mask):
            return self._forward_rows(input_ids, attention_mask, labels, mode=mode, grad=grad)
        info: dict[str, Any] = {}
        with pristine_transformers(), torch.set_grad_enabled(grad), timed(info, reference=True):
            self.model.train(mode == "train")
            out = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                use_cache=False,
            )
            self.model.eval()
        loss = None if labels is None else reference_loss(out.logits, labels.to(self.device), self.dtype)
        return Forward(out.logits, loss, info["seconds"], info["compiled"])

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
    def forward_cached(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        split: int,
        explicit_positions: bool = False,
    ) -> torch.Tensor:
        """Logits at positions ``split:``, computed after a prefill of ``:split`` into a KV cache
        (``explicit_positions``: the second call is given ``position_ids`` ``split..n-1``)."""
        ids = input_ids.to(self.device)
        am = None if attention_mask is None else attention_mask.to(self.device)
        with pristine_transformers(), timed({}, reference=True):
            first = self.model(
                input_ids=ids[:, :split], attention_mask=None if am is None else am[:, :split], use_cache=True
            )
            second = self.model(
                input_ids=ids[:, split:],
                attention_mask=am,
                past_key_values=first.past_key_values,
                use_cache=True,
                **suffix_positions(ids, split, explicit_positions),
            )
        return second.logits

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy continuation: (new tokens ``(bsz, n)``, each step's raw logits ``(bsz, n, vocab)``; EOS is held off until n)."""
        if self._rowwise(attention_mask):  # see _rowwise: each row alone, without its (left) pads
            parts = [
                self.generate(input_ids[b : b + 1, attention_mask[b].bool()], None, max_new_tokens)
                for b in range(input_ids.shape[0])
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        with pristine_transformers(), timed({}, reference=True):
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.config.pad_token_id,
            )
        n = input_ids.shape[1]
        return out.sequences[:, n:], torch.stack(out.logits, dim=1)

    def attention_grads(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {name: grad}) of one training step's loss w.r.t. every q/k/v/o projection weight."""
        with _only_attention_trainable(self.model) as params:
            loss = self.forward(input_ids, attention_mask, labels, mode="train", grad=True).loss
            with pristine_transformers():
                loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in params.items()}
        return loss.detach(), grads


def suffix_positions(input_ids: torch.Tensor, split: int, explicit: bool) -> dict[str, torch.Tensor]:
    """``{"position_ids": split..n-1 per row}`` if ``explicit`` (the positions the full forward uses),
    else ``{}`` (the model infers them from the cache, as transformers does)."""
    if not explicit:
        return {}
    bsz, n = input_ids.shape
    return {"position_ids": torch.arange(split, n, device=input_ids.device).unsqueeze(0).expand(bsz, -1)}


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal-LM loss written out: mean cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]``
    over labels != -100, computed in float64 for a float64 model and in float32 otherwise (the
    upcast transformers' own loss does)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    shift_logits = logits[:, :-1].to(acc).reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)


@contextlib.contextmanager
def _only_attention_trainable(model: torch.nn.Module) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Within the block only the q/k/v/o projection weights require grad (grads zeroed); restored after."""
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    params = {n: p for n, p in model.named_parameters() if n.rsplit(".", 2)[-2] in ATTENTION_PROJECTIONS}
    if not params:
        raise RuntimeError("no q/k/v/o projection weights found in the model; has its layout changed?")
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
        p.grad = None
    try:
        yield params
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(before[n])
            p.grad = None


# --- Unsloth -----------------------------------------------------------------------------------------


def unsloth_skip_reason() -> str | None:
    """Why Unsloth's model cannot run here (None if it can): it needs a CUDA GPU and an install."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible: Unsloth's model runs Triton kernels (the GPU tier needs one)"
    if unsloth_adapter.installed_version() is None:
        return "unsloth is not installed in this environment (see docs/gpu.md for the offline bundle)"
    return None


_UNSLOTH: dict[tuple[str, torch.dtype, int], tuple[Any, Any, float]] = {}


def _set_unsloth_env() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")


def load_unsloth(
    path: str | os.PathLike[str], dtype: torch.dtype, max_seq_length: int = MAX_SEQ_LENGTH
) -> Any:
    """``(model, tokenizer)`` from ``FastLanguageModel.from_pretrained``, cached per key in this process."""
    key = (str(Path(path)), dtype, max_seq_length)
    if key not in _UNSLOTH:
        _set_unsloth_env()
        unsloth_adapter.load()  # imports unsloth (before it is asked for anything), or says why not
        from unsloth import FastLanguageModel

        t0 = time.perf_counter()
        model, tok = FastLanguageModel.from_pretrained(
            str(path), max_seq_length=max_seq_length, dtype=dtype, load_in_4bit=False
        )
        took = time.perf_counter() - t0
        TIMINGS.load_s += took
        _UNSLOTH[key] = (model, tok, took)
    return _UNSLOTH[key][:2]


def _undo_for_inference(model: torch.nn.Module) -> None:
    """Drop the ``_flag_for_generation`` marks ``for_inference`` leaves (they reroute every forward
    through Unsloth's inference kernels), without ``for_training``'s side effects."""
    for m in model.modules():
        if "_flag_for_generation" in vars(m):
            del m._flag_for_generation


class UnslothTarget:
    """Unsloth's Gemma-2 as ``FastLanguageModel.from_pretrained`` loads it, on the current CUDA device."""

    def __init__(
        self, path: str | os.PathLike[str], dtype: torch.dtype, max_seq_length: int = MAX_SEQ_LENGTH
    ) -> None:
        reason = unsloth_skip_reason()
        if reason:
            raise unsloth_adapter.UnslothUnavailable(reason)
        self.path, self.dtype, self.max_seq_length = Path(path), dtype, max_seq_length
        self.model, self.tokenizer = load_unsloth(path, dtype, max_seq_length)
        self.device = str(next(self.model.parameters()).device)
        self.name = f"unsloth-{unsloth_adapter.installed_version()}[{str(dtype).removeprefix('torch.')}]"

    @property
    def config(self) -> Any:
        return self.model.config

    def _call(self, **kw: Any) -> Any:
        _set_unsloth_env()
        return self.model(
            **{k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        mode: str = "eval",
        grad: bool = False,
    ) -> Forward:
        _undo_for_inference(self.model)
        info: dict[str, Any] = {}
        self.model.train(mode == "train")
        try:
            with torch.set_grad_enabled(grad), timed(info):
                kw: dict[str, Any] = dict(input_ids=input_ids, attention_mask=attention_mask)
                if labels is not None:
                    kw["labels"] = labels
                out = self._call(**kw)
        finally:
            self.model.eval()
        if out.logits.numel() == 0:
            raise RuntimeError("Unsloth returned empty logits although UNSLOTH_RETURN_LOGITS=1 was set")
        return Forward(out.logits, out.loss, info["seconds"], info["compiled"])

    @torch.no_grad()
    def forward_cached(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        split: int,
        explicit_positions: bool = False,
    ) -> torch.Tensor:
        """Logits at ``split:`` after a prefill of ``:split``; a one-token suffix takes Unsloth's
        decode path (``Gemma2Model_fast_forward_inference``)."""
        _undo_for_inference(self.model)
        self.model.eval()
        with timed({}):
            first = self._call(
                input_ids=input_ids[:, :split],
                attention_mask=None if attention_mask is None else attention_mask[:, :split],
                use_cache=True,
            )
            # return_dict explicitly: Unsloth 2026.10.9's one-token decode branch returns a tuple
            # when it is left unset (it resolves the config default only on the other branch).
            second = self._call(
                input_ids=input_ids[:, split:],
                attention_mask=attention_mask,
                past_key_values=first.past_key_values,
                use_cache=True,
                return_dict=True,
                **suffix_positions(input_ids, split, explicit_positions),
            )
        return second.logits

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy generation after ``FastLanguageModel.for_inference`` (undone afterwards)."""
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(self.model)
        try:
            with timed({}):
                out = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=max_new_tokens,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=self.config.pad_token_id,
                )
        finally:
            _undo_for_inference(self.model)
            self.model.eval()
        n = input_ids.shape[1]
        return out.sequences[:, n:], torch.stack(out.logits, dim=1)

    def attention_grads(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {name: grad}) of one training-mode forward + ``loss.backward()`` (Unsloth's own loss).

        ``enable_input_require_grads`` is on for the step, as PEFT and Unsloth's trainers set it: Unsloth
        loads with its gradient checkpointing armed, and a checkpointed segment whose input needs no
        grad (the embeddings are frozen) would give its weights no gradient at all."""
        _undo_for_inference(self.model)
        with _only_attention_trainable(self.model) as params:
            self.model.enable_input_require_grads()
            self.model.train()
            try:
                with timed({}):
                    out = self._call(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
                    out.loss.backward()
            finally:
                self.model.eval()
                self.model.disable_input_require_grads()
            missing = [n for n, p in params.items() if p.grad is None]
            if missing:
                raise RuntimeError(f"no gradient reached {missing[:4]} after loss.backward() through Unsloth")
            grads = {n: p.grad.detach().clone() for n, p in params.items()}
        return out.loss.detach(), grads


def gpu_targets(
    path: str | os.PathLike[str], dtype: torch.dtype
) -> tuple[UnslothTarget, EagerTarget, EagerTarget]:
    """(Unsloth in ``dtype``, golden eager float64, baseline eager ``dtype``), all on the CUDA device."""
    return (
        UnslothTarget(path, dtype),
        EagerTarget(path, torch.float64, "cuda"),
        EagerTarget(path, dtype, "cuda"),
    )


def timings_lines() -> list[str]:
    """The GPU tier's time split, for the end of the run."""
    t = TIMINGS
    return [
        f"Unsloth from_pretrained: {t.load_s:.1f}s in total",
        f"target calls that compiled a graph: {t.compile_calls} taking {t.compile_s:.1f}s; "
        f"target calls that only ran: {t.run_calls} taking {t.run_s:.1f}s",
        f"eager reference (float64 golden + same-dtype baseline): {t.reference_s:.1f}s",
    ]


def peak_gib() -> float:
    """Peak CUDA memory since the last ``reset_peak()``, in GiB (0 without CUDA)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
