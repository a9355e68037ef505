"""The target registry: every implementation the suite checks against the oracle, by name.

A kernel target takes a ``Case`` and its ``Inputs`` and returns the attention output
``(bsz, q_len, n_heads * head_dim)``. Names read ``<kernel>[<mask source>]``:

- ``oracle-4d``  a ``(bsz, 1, q, kv)`` additive mask built by ``masks.allowed`` (any padding)
- ``oracle-2d``  a static ``(n, n)`` mask over absolute positions, n > kv_len (no padding)
- ``unsloth-static``  Unsloth's own static ``SWA_mask`` / ``GA_mask`` (no padding)
- ``unsloth-eval``    Unsloth's own per-call 4-D masks from a 2-D ``attention_mask`` (evaluation)

Model-level targets (Unsloth's whole Gemma-2 on a GPU) live in ``gemma2_regress.model.targets``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from gemma2_regress import unsloth_adapter
from gemma2_regress.kernel.cases import Case, Inputs
from gemma2_regress.reference import masks

KERNELS = ("slow_attention_softcapping", "slow_inference_attention_softcapping")
STATIC_MASK_EXTRA = 3  # static masks are built at max_seq_length, longer than the batch


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
            swa, ga = u.eval_masks(am, case.q_len, window, dt)
            return swa if case.window is not None else ga
        raise KeyError(self.mask_source)

    def run(self, case: Case, inputs: Inputs) -> torch.Tensor:
        u = unsloth_adapter.load()
        mod = unsloth_adapter.attention_module_stub(
            case.n_heads, case.n_kv_heads, case.head_dim, case.scalar, case.softcap or 0.0
        )
        length = case.kv_len if u.length_arg == "kv_len" else case.q_len
        fn = u.kernel(self.kernel)
        return fn(inputs.q, inputs.k, inputs.v, self.mask(case, inputs, u), mod, case.bsz, length)


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
