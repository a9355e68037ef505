"""A ``Case``: one attention problem, drawn by a strategy and turned into tensors.

A case fixes shapes, window, padding, dtype and how large the logits are; ``make_inputs`` turns it
into Q/K/V (already rotated, as attention sees them) and a padding mask, deterministically from its
seed. The same case is handed to the target and to the oracle.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from gemma2_regress.reference import masks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GEMMA2_WINDOW = 4096  # the real Gemma-2 sliding window


class PaddedBatch:
    """What ``Case`` and ``ModelCase`` share: ``bsz`` rows, ``pads[b]`` pad tokens on ``pad_side``
    ("none", "left" or "right") of row ``b``, run in ``dtype`` (a key of ``DTYPES``)."""

    bsz: int
    pad_side: str
    pads: tuple[int, ...]
    dtype: str

    def padding_problems(self, length: int) -> list[str]:
        """What is wrong with the padding and dtype of rows ``length`` long (empty if nothing)."""
        problems = []
        if self.pads and len(self.pads) != self.bsz:
            problems.append(f"{len(self.pads)} pad counts for bsz {self.bsz}")
        if any(p < 0 or p > length for p in self.pads):
            problems.append(f"pads {self.pads} outside 0..{length}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} not one of {sorted(DTYPES)}")
        if self.pad_side not in ("none", "left", "right"):
            problems.append(f"pad_side {self.pad_side!r}")
        return problems

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def padded(self) -> bool:
        return self.pad_side != "none" and any(self.pads)


@dataclasses.dataclass(frozen=True)
class Case(PaddedBatch):
    """One attention problem. ``window=None`` is a global layer; ``pads[b]`` pad tokens on ``pad_side``.

    ``logit_std`` is the standard deviation of the raw (pre-cap) logits the inputs produce; values
    around ``softcap`` put the logits in tanh's curved range, where a dropped cap is visible.
    """

    bsz: int = 1
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    q_len: int = 8
    kv_len: int = 8
    window: int | None = 4
    pad_side: str = "none"
    pads: tuple[int, ...] = ()
    dtype: str = "float32"
    softcap: float | None = 50.0
    scalar: float = 16.0
    logit_std: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = self.padding_problems(self.kv_len)
        if self.q_len > self.kv_len:
            problems.append(f"q_len {self.q_len} > kv_len {self.kv_len}")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads {self.n_heads} not a multiple of n_kv_heads {self.n_kv_heads}")
        if problems:
            raise ValueError("invalid Case: " + "; ".join(problems))

    @property
    def crosses_window(self) -> bool:
        return self.window is not None and self.kv_len > self.window

    def short(self) -> str:
        """A one-line description for test ids and failure messages."""
        w = "global" if self.window is None else f"W={self.window}"
        pad = f" pad={self.pad_side}{list(self.pads)}" if self.padded else ""
        return (
            f"b{self.bsz} h{self.n_heads}/{self.n_kv_heads} d{self.head_dim} "
            f"q{self.q_len}/kv{self.kv_len} {w}{pad} {self.dtype} cap={self.softcap} "
            f"s={self.scalar} std={self.logit_std:g} seed={self.seed}"
        )


@dataclasses.dataclass
class Inputs:
    """Tensors for one case: q ``(b, h, q, d)``, k/v ``(b, kv_h, kv, d)``, key_valid ``(b, kv)`` or None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    key_valid: torch.Tensor | None

    def clone(self) -> Inputs:
        kv = None if self.key_valid is None else self.key_valid.clone()
        return Inputs(self.q.clone(), self.k.clone(), self.v.clone(), kv)


def make_inputs(case: Case, device: str | torch.device = "cpu") -> Inputs:
    """Deterministic inputs for ``case`` in its dtype on ``device``.

    q and k entries are N(0, m^2) with m chosen so that the scaled logit ``q.k / sqrt(s)`` has
    standard deviation ``case.logit_std`` (its variance is ``m^4 d / s``).
    """
    g = torch.Generator().manual_seed(case.seed)
    m = math.sqrt(case.logit_std * math.sqrt(case.scalar) / math.sqrt(case.head_dim))
    b, h, kvh, d = case.bsz, case.n_heads, case.n_kv_heads, case.head_dim
    q = torch.randn(b, h, case.q_len, d, generator=g) * m
    k = torch.randn(b, kvh, case.kv_len, d, generator=g) * m
    v = torch.randn(b, kvh, case.kv_len, d, generator=g)
    key_valid = None
    if case.padded:
        key_valid = masks.padding_from_lengths(b, case.kv_len, list(case.pads), case.pad_side)
    cast = {"dtype": case.torch_dtype, "device": device}
    return Inputs(
        q.to(**cast),
        k.to(**cast),
        v.to(**cast),
        None if key_valid is None else key_valid.to(device),
    )
