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


PAD_SIDES = ("none", "left", "right", "both")


class PaddedBatch:
    """What ``Case`` and ``ModelCase`` share: ``bsz`` rows, ``pads[b]`` pad tokens on ``pad_side``
    ("none", "left", "right" or "both") of row ``b``, run in ``dtype`` (a key of ``DTYPES``); with
    "both", ``pads[b]`` on the left and ``right_pads[b]`` on the right of row ``b``.

    One side per batch is what a tokenizer's ``padding_side`` and a collator give; "both" is a row with
    pads on both ends (a left-padded prompt joined to a right-padded completion, as TRL's GRPO and RLOO
    trainers join them), a legal attention_mask that covers any per-row mix of sides too.
    """

    bsz: int
    pad_side: str
    pads: tuple[int, ...]
    right_pads: tuple[int, ...]
    dtype: str

    def padding_problems(self, length: int) -> list[str]:
        """What is wrong with the padding and dtype of rows ``length`` long (empty if nothing)."""
        problems = []
        for name, counts in (("pad", self.pads), ("right pad", self.right_pads)):
            if counts and len(counts) != self.bsz:
                problems.append(f"{len(counts)} {name} counts for bsz {self.bsz}")
            if any(p < 0 or p > length for p in counts):
                problems.append(f"{name}s {counts} outside 0..{length}")
        if self.right_pads and self.pad_side != "both":
            problems.append(f"right_pads with pad_side {self.pad_side!r}: use pad_side='both'")
        if self.pad_side not in PAD_SIDES:
            problems.append(f"pad_side {self.pad_side!r} not one of {PAD_SIDES}")
        if not problems and any(left + right > length for left, right in self.row_pads):
            problems.append(f"pads {self.row_pads} (left, right) exceed the length {length} of a row")
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} not one of {sorted(DTYPES)}")
        return problems

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def padded(self) -> bool:
        return self.pad_side != "none" and (any(self.pads) or any(self.right_pads))

    @property
    def row_pads(self) -> tuple[tuple[int, int], ...]:
        """``(left, right)`` pad counts of each row (zeros when not padded)."""
        if not self.padded:
            return ((0, 0),) * self.bsz
        on = {"left": (self.pads, ()), "right": ((), self.pads), "both": (self.pads, self.right_pads)}
        lefts, rights = on[self.pad_side]
        return tuple((lefts[b] if lefts else 0, rights[b] if rights else 0) for b in range(self.bsz))

    def padding_mask(self, length: int) -> torch.Tensor | None:
        """The ``(bsz, length)`` 2-D attention_mask (1 real, 0 pad), or None when nothing is padded."""
        if not self.padded:
            return None
        return masks.padding_from_lengths(
            self.bsz, length, list(self.pads), self.pad_side, list(self.right_pads)
        )

    def padding_text(self) -> str:
        """The per-row padding for ids: ``pad=left[7, 0]``; with pads on both ends ``pad=both[3+1, 0+5]``
        (left+right per row); empty when nothing is padded."""
        if not self.padded:
            return ""
        if self.pad_side == "both":
            return " pad=both[" + ", ".join(f"{left}+{right}" for left, right in self.row_pads) + "]"
        return f" pad={self.pad_side}{list(self.pads)}"


@dataclasses.dataclass(frozen=True)
class Case(PaddedBatch):
    """One attention problem. ``window=None`` is a global layer; padding as in ``PaddedBatch``.

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
    right_pads: tuple[int, ...] = ()
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

    def unpadded(self) -> Case:
        """The same case with no padding."""
        return dataclasses.replace(self, pad_side="none", pads=(), right_pads=())

    @property
    def crosses_window(self) -> bool:
        return self.window is not None and self.kv_len > self.window

    def short(self) -> str:
        """A one-line description for test ids and failure messages."""
        w = "global" if self.window is None else f"W={self.window}"
        return (
            f"b{self.bsz} h{self.n_heads}/{self.n_kv_heads} d{self.head_dim} "
            f"q{self.q_len}/kv{self.kv_len} {w}{self.padding_text()} {self.dtype} cap={self.softcap} "
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
    key_valid = case.padding_mask(case.kv_len)
    cast = {"dtype": case.torch_dtype, "device": device}
    return Inputs(
        q.to(**cast),
        k.to(**cast),
        v.to(**cast),
        None if key_valid is None else key_valid.to(device),
    )
