"""The target registry: every implementation the suite checks against the oracle, by name.

A kernel target takes a ``Case`` and its ``Inputs`` and returns the attention output
``(bsz, q_len, n_heads * head_dim)``. Names read ``<kernel>[<mask source>]``:

- ``oracle-4d``  a ``(bsz, 1, q, kv)`` additive mask built by ``masks.allowed`` (any padding)
- ``oracle-2d``  a static ``(n, n)`` mask over absolute positions, n > kv_len (no padding)
- ``unsloth-static``  Unsloth's own static ``SWA_mask`` / ``GA_mask`` (no padding)
- ``unsloth-eval``    Unsloth's own per-call 4-D masks from a 2-D ``attention_mask`` (evaluation)

``Gemma2LayerTarget`` (``unsloth-gemma2-layer[no-mask | packed | padding-mask]``) is one Gemma-2 layer's
attention in Unsloth, flash-attn path included (inside ``unsloth_flash.flash_path``); it is not in the registry.

Model-level targets (Unsloth's whole Gemma-2 on a GPU) live in ``gemma2_regress.model.targets``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

import torch

from gemma2_regress import unsloth_adapter, unsloth_layer
from gemma2_regress.kernel.cases import Case, Inputs
from gemma2_regress.reference import masks

KERNELS = ("slow_attention_softcapping", "slow_inference_attention_softcapping")
STATIC_MASK_EXTRA = 3  # static masks are built at max_seq_length, longer than the batch


class AttentionTarget(Protocol):
    """What ``properties.check_kernel_matches_oracle`` runs: a name and ``run(case, inputs)``."""

    @property
    def name(self) -> str: ...

    def run(self, case: Case, inputs: Inputs) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class KernelTarget:
    """One kernel fed with one kind of mask; ``supports`` says which cases it can take."""

    kernel: str
    mask_source: str

    @property
    def name(self) -> str:
        return f"{self.kernel}[{self.mask_source}]"

    def supports(self, case: Case) -> bool:
        if case.softcap is None:
            return False  # Unsloth always caps (its kernels read the config's cap)
        return not (self.mask_source in ("oracle-2d", "unsloth-static") and case.padded)

    def mask(self, case: Case, inputs: Inputs, u: unsloth_adapter.Unsloth) -> torch.Tensor:
        dev, dt = inputs.q.device, case.torch_dtype
        if self.mask_source == "oracle-4d":
            vis = masks.allowed(case.q_len, case.kv_len, case.window, inputs.key_valid, device=dev)
            if vis.dim() == 2:
                vis = vis.expand(case.bsz, -1, -1)
            return masks.additive(vis, dt)[:, None]
        n = case.kv_len + STATIC_MASK_EXTRA
        if self.mask_source == "oracle-2d":
            return masks.additive(masks.allowed(n, n, case.window, device=dev), dt)
        window = case.window if case.window is not None else n
        if self.mask_source == "unsloth-static":
            swa, ga = u.static_masks(n, window, dt, dev)
            return swa if case.window is not None else ga
        if self.mask_source == "unsloth-eval":
            am = inputs.key_valid
            if am is None:
                am = torch.ones(case.bsz, case.kv_len, dtype=torch.long, device=dev)
            return u.eval_mask(am, case.q_len, window, dt, sliding=case.window is not None)
        raise KeyError(self.mask_source)

    def run(self, case: Case, inputs: Inputs) -> torch.Tensor:
        u = unsloth_adapter.load()
        mod = unsloth_adapter.attention_module_stub(
            case.n_heads, case.n_kv_heads, case.head_dim, case.scalar, case.softcap or 0.0
        )
        length = case.kv_len if u.length_arg == "kv_len" else case.q_len
        fn = u.kernel(self.kernel)
        return fn(inputs.q, inputs.k, inputs.v, self.mask(case, inputs, u), mod, case.bsz, length)


LAYER_INPUTS = ("no-mask", "packed", "padding-mask")


@dataclasses.dataclass(frozen=True, eq=False)
class Gemma2LayerTarget:
    """One Gemma-2 layer's attention in Unsloth, ``Gemma2Attention_fast_forward``, fed a case's q/k/v
    (``unsloth_layer.gemma2_attention``) with what ``LlamaModel_fast_forward`` hands a layer:

    - ``no-mask``       an unpadded batch: no attention_mask (that loop drops an all-ones one where
                        flash-attn has softcapping) and its flash sentinels as ``causal_mask``
    - ``packed``        the same, the batch's real tokens packed into one row of segments
                        (``packed_seq_lengths``, a padding-free collator's) plus ``tail`` junk tokens (its
                        trailing pad, which Unsloth covers with a segment of its own)
    - ``padding-mask``  a padded evaluation batch: its 2-D attention_mask and Unsloth's 4-D eval masks

    Which path runs is Unsloth's choice: inside ``unsloth_flash.flash_path`` (flash-attn with softcapping) the
    first two take flash-attn (FLASH_DENSE, FLASH_VARLEN) and a padding mask the slow softcapping kernel;
    record the calls with ``unsloth_flash.recording_flash_calls``. ``config`` is the model's ``Gemma2Config``
    (e.g. ``model.tiny.tiny_config()``): the case must have its geometry, cap, scalar and, on a sliding
    layer, its window (``supports``). Not in ``REGISTRY``: its paths depend on the block it runs in.
    """

    inputs: str
    config: Any
    tail: int = 0

    @property
    def name(self) -> str:
        return f"unsloth-gemma2-layer[{self.inputs}]"

    def supports(self, case: Case) -> bool:
        return not self.problems(case)

    def problems(self, case: Case) -> list[str]:
        """Why this target cannot take ``case`` (empty if it can)."""
        c = self.config
        out = []
        if self.inputs not in LAYER_INPUTS:
            out.append(f"inputs {self.inputs!r} not one of {LAYER_INPUTS}")
        got = (case.n_heads, case.n_kv_heads, case.head_dim, case.scalar, case.softcap)
        want = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.query_pre_attn_scalar,
            c.attn_logit_softcapping,
        )
        if got != want:
            out.append(f"(heads, kv heads, head_dim, scalar, softcap) {got} != the config's {want}")
        if case.window not in (None, c.sliding_window):
            out.append(f"window {case.window} is neither global nor the config's {c.sliding_window}")
        if case.q_len != case.kv_len:
            out.append("q_len != kv_len (no KV cache here)")
        if case.padded and self.inputs == "no-mask":
            out.append("a padded case needs inputs 'padding-mask' or 'packed'")
        return out

    def run(self, case: Case, inputs: Inputs) -> torch.Tensor:
        problems = self.problems(case)
        if problems:
            raise ValueError(f"{self.name} cannot take {case.short()}: {'; '.join(problems)}")
        u = unsloth_adapter.load()
        sliding = case.window is not None
        layer = functools.partial(unsloth_layer.gemma2_attention, u, config=self.config, sliding=sliding)
        if self.inputs == "no-mask":
            return layer(inputs.q, inputs.k, inputs.v)
        if self.inputs == "padding-mask":
            am = inputs.key_valid
            if am is None:
                am = torch.ones(case.bsz, case.kv_len, dtype=torch.long, device=inputs.q.device)
            mask = u.eval_mask(am, case.q_len, self.config.sliding_window, case.torch_dtype, sliding=sliding)
            return layer(inputs.q, inputs.k, inputs.v, causal_mask=mask, attention_mask=am)
        return self._packed(layer, case, inputs)

    def _packed(self, layer: Callable[..., torch.Tensor], case: Case, inputs: Inputs) -> torch.Tensor:
        """Each row's real tokens, one segment each, then ``tail`` junk tokens, as one row; the output is
        put back at the real positions (zero at pads, which no comparison reads)."""
        b, n, dev = case.bsz, case.q_len, inputs.q.device
        real = inputs.key_valid.bool() if inputs.key_valid is not None else torch.ones(b, n, dtype=torch.bool)
        real = real.to(dev)
        g = torch.Generator().manual_seed(case.seed)

        def pack(x: torch.Tensor) -> torch.Tensor:  # (b, h, n, d) -> (1, h, real tokens + tail, d)
            rows = x.transpose(1, 2)[real].transpose(0, 1).unsqueeze(0)
            junk = 3 * torch.randn(1, x.shape[1], self.tail, x.shape[3], generator=g)
            return torch.cat([rows, junk.to(dtype=x.dtype, device=dev)], dim=2)

        lengths = real.sum(-1).to(torch.int32)
        out = layer(pack(inputs.q), pack(inputs.k), pack(inputs.v), packed_seq_lengths=lengths)
        full = out.new_zeros(b, n, out.shape[-1])
        full[real] = out[0, : int(lengths.sum())]
        return full


MASK_SOURCES = ("oracle-4d", "oracle-2d", "unsloth-static", "unsloth-eval")
REGISTRY: dict[str, KernelTarget] = {
    t.name: t for t in (KernelTarget(k, m) for k in KERNELS for m in MASK_SOURCES)
}


def kernel_targets(select: Callable[[KernelTarget], bool] = lambda t: True) -> list[KernelTarget]:
    """Registered kernel targets, optionally filtered."""
    return [t for t in REGISTRY.values() if select(t)]


def get(name: str) -> KernelTarget:
    """A target by name; an unknown name lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; known: {', '.join(REGISTRY)}") from None
