"""Model-level targets: one interface (``ModelTarget``) and the run logic its two implementations share.

A ``ModelTarget`` runs a tiny checkpoint (``gemma2_regress.model.tiny``) the way a user does and returns
logits and loss (``forward``), a cached continuation (``forward_cached``), greedy generations
(``generate``) or attention-weight gradients (``attention_grads``). The implementations:

- ``fast.UnslothTarget``  Unsloth's ``FastLanguageModel`` (GPU): the target under test;
- ``eager.EagerTarget``   transformers' eager ``Gemma2ForCausalLM``: in float64 the golden reference,
                          in the target's dtype the baseline of the tolerance rule.

``TargetBase`` holds what both do the same way: moving inputs to the device, train/eval mode around a
call, the prefill-then-continue of a KV cache, greedy generation, collecting gradients of the q/k/v/o
projection weights only, and timing every call into the ``ModelSession`` the target was built with.
A subclass says how one call is made (``_call``), what surrounds a run (``_scope``, ``_generating``),
what a forward passes and returns, and how one training step runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

import torch

from gemma2_regress.model.session import ModelSession, timed

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclasses.dataclass
class Forward:
    """One forward: logits ``(bsz, seq, vocab)`` (final softcap applied), loss (scalar or None)."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    seconds: float
    compiled: bool  # did torch.compile build a new graph during this call (a compile, not a run)


class ModelTarget(Protocol):
    """What the property functions (``gemma2_regress.model.properties``) run."""

    name: str
    dtype: torch.dtype
    device: str
    session: ModelSession  # shared by a target, its golden and its baseline
    model: Any

    @property
    def config(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

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
        """Logits and loss (``labels``: the loss; ``mode``: "eval" or "train"; ``grad``: keep the graph;
        ``extra``: further model arguments)."""
        ...

    def forward_cached(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        split: int,
        explicit_positions: bool = False,
    ) -> torch.Tensor:
        """Logits at positions ``split:``, computed after a prefill of ``:split`` into a KV cache
        (``explicit_positions``: the second call is given ``position_ids`` ``split..n-1``)."""
        ...

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy continuation: (new tokens ``(bsz, n)``, each step's raw logits ``(bsz, n, vocab)``;
        EOS is held off until n)."""
        ...

    def attention_grads(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {name: grad}) of one training step's loss w.r.t. every q/k/v/o projection weight."""
        ...


class TargetBase:
    """The run logic ``EagerTarget`` and ``UnslothTarget`` share (see the module docstring)."""

    reference: ClassVar[bool] = False  # its calls count as the reference's time, not the target's
    what: ClassVar[str] = "the model"  # for messages
    cached_step_kwargs: ClassVar[dict[str, Any]] = {}  # extra arguments of the call after a prefill

    name: str
    dtype: torch.dtype
    device: str
    session: ModelSession
    model: Any

    @property
    def config(self) -> Any:
        return self.model.config

    # --- what a subclass decides ----------------------------------------------------------------

    def _scope(self) -> contextlib.AbstractContextManager[Any]:
        """What surrounds every run of the model (its forward, its cached forward)."""
        return contextlib.nullcontext()

    def _generating(self) -> contextlib.AbstractContextManager[Any]:
        """What surrounds ``generate``."""
        return self._scope()

    def _forward_kwargs(self, labels: torch.Tensor | None) -> dict[str, Any]:
        """The arguments a forward passes besides ``input_ids`` and ``attention_mask``."""
        raise NotImplementedError

    def _forward_result(self, out: Any, labels: torch.Tensor | None, info: dict[str, Any]) -> Forward:
        raise NotImplementedError

    def _train_step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        extra: Mapping[str, Any],
    ) -> torch.Tensor:
        """One training-mode forward (``extra``: further model arguments) and ``loss.backward()``;
        returns the loss."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------

    def _timed(self, out: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
        return timed(out, self.session.timings, reference=self.reference)

    def _call(self, **kw: Any) -> Any:
        """One call of the model, its tensor arguments moved to the target's device."""
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
        extra: Mapping[str, Any] | None = None,
    ) -> Forward:
        """One forward; ``extra``: further model arguments (a packed batch's ``position_ids`` and
        ``packed_seq_lengths``)."""
        info: dict[str, Any] = {}
        with self._scope():
            self.model.train(mode == "train")
            try:
                with torch.set_grad_enabled(grad), self._timed(info):
                    out = self._call(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        **self._forward_kwargs(labels),
                        **(extra or {}),
                    )
            finally:
                self.model.eval()
        return self._forward_result(out, labels, info)

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
        with self._scope():
            self.model.eval()
            with self._timed({}):
                first = self._call(
                    input_ids=input_ids[:, :split],
                    attention_mask=None if attention_mask is None else attention_mask[:, :split],
                    use_cache=True,
                )
                second = self._call(
                    input_ids=input_ids[:, split:],
                    attention_mask=attention_mask,
                    past_key_values=first.past_key_values,
                    use_cache=True,
                    **self.cached_step_kwargs,
                    **suffix_positions(input_ids, split, explicit_positions),
                )
        return second.logits

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy continuation: (new tokens ``(bsz, n)``, each step's raw logits ``(bsz, n, vocab)``;
        EOS is held off until n)."""
        with self._generating(), self._timed({}):
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
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {name: grad}) of one training step's loss w.r.t. every q/k/v/o projection weight
        (``extra``: further model arguments, as in ``forward``)."""
        with _only_attention_trainable(self.model) as params:
            loss = self._train_step(input_ids, attention_mask, labels, extra or {})
            missing = [n for n, p in params.items() if p.grad is None]
            if missing:
                raise RuntimeError(
                    f"no gradient reached {missing[:4]} after loss.backward() through {self.what}"
                )
            grads = {n: p.grad.detach().clone() for n, p in params.items()}
        return loss.detach(), grads


def suffix_positions(input_ids: torch.Tensor, split: int, explicit: bool) -> dict[str, torch.Tensor]:
    """``{"position_ids": split..n-1 per row}`` if ``explicit`` (the positions the full forward uses),
    else ``{}`` (the model infers them from the cache, as transformers does)."""
    if not explicit:
        return {}
    bsz, n = input_ids.shape
    return {"position_ids": torch.arange(split, n, device=input_ids.device).unsqueeze(0).expand(bsz, -1)}


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
