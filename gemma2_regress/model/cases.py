"""Model-level cases: token batches for the tiny Gemma-2, drawn around and beyond the 4096 window.

A ``ModelCase`` fixes batch size, length, padding, whether an ``attention_mask`` is passed, train or
eval mode, the dtype Unsloth runs in, the checkpoint's init and the token seed; ``inputs`` turns it
into ``(input_ids, attention_mask, labels)`` with ``tiny.token_batch``.

Why so few lengths: Unsloth's kernels are ``torch.compile``d with max-autotune; a new shape can
cost seconds to tens of seconds of compilation, a repeated one milliseconds. Lengths come from a
short ``sampled_from`` list (the window's edges 4095/4096/4097, 2W = 8192 and 4W = 16384), batch sizes
from (1, 2, 3, 4, 8) capped by what a float64 eager reference of that length fits in, so compiled
shapes repeat across examples. The same strategies with ``window``/``lengths`` shrunk drive the CPU validation of
the properties on transformers alone.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
from hypothesis import strategies as st

from gemma2_regress.kernel.cases import GEMMA2_WINDOW, PaddedBatch
from gemma2_regress.model import tiny

W = GEMMA2_WINDOW
LENGTHS = (W - 1, W, W + 1, 2 * W, 4 * W)
# The float64 eager reference holds a few (bsz, heads, L, L) float64 tensors per layer: cap bsz * L^2.
MAX_ROWS_BY_LENGTH = ((W + 1, 8), (2 * W + 1, 4), (4 * W, 1))
MODES = ("eval", "train")
# Batch sizes drawn from a short list too (1..8 spanned, odd and even): fewer distinct shapes to compile.
BATCH_SIZES = (1, 2, 3, 4, 8)


@dataclasses.dataclass(frozen=True)
class ModelCase(PaddedBatch):
    """One model-level problem; padding as in ``PaddedBatch`` (per row, on one side or both ends).

    ``with_mask=False`` passes no attention_mask (then nothing is padded). ``mode="train"`` runs
    the model in training mode, where Unsloth drops the attention_mask when labels are passed: such
    cases are only drawn with right padding or none (a causal model's real positions never see a
    right pad), which keeps them comparable with transformers, which always applies the mask.
    """

    bsz: int = 1
    seq_len: int = 4097
    pad_side: str = "none"
    pads: tuple[int, ...] = ()
    right_pads: tuple[int, ...] = ()
    with_mask: bool = True
    with_labels: bool = True
    mode: str = "eval"
    dtype: str = "float32"
    init: str = "large"
    seed: int = 0

    def __post_init__(self) -> None:
        problems = self.padding_problems(self.seq_len)
        rows = () if problems else self.row_pads  # readable only once the padding itself is valid
        if self.padded and not self.with_mask:
            problems.append("padding without an attention_mask cannot be compared; set with_mask=True")
        if rows and self.padded and all(left + right >= self.seq_len for left, right in rows):
            problems.append("every row fully padded: no position to compare")
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} not one of {MODES}")
        if self.mode == "train" and self.with_labels and any(left for left, _ in rows):
            problems.append("train mode with labels drops the mask in Unsloth: use right padding")
        if self.init not in tiny.INITS:
            problems.append(f"init {self.init!r} not one of {tiny.INITS}")
        if problems:
            raise ValueError("invalid ModelCase: " + "; ".join(problems))

    def short(self) -> str:
        mask = "mask" if self.with_mask else "nomask"
        labels = "" if self.with_labels else " nolabels"
        return (
            f"b{self.bsz} L{self.seq_len}{self.padding_text()} {mask}{labels} {self.mode} {self.dtype} "
            f"init={self.init} seed={self.seed}"
        )

    def inputs(self, config: object) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(input_ids, attention_mask or None, labels or None)``; see ``labels_for``."""
        ids, mask = self._tokens(config)
        labels = labels_for(ids, mask) if self.with_labels else None
        return ids, (mask if self.with_mask else None), labels

    def valid(self, config: object) -> torch.Tensor:
        """``(bsz, seq_len)`` bool: the positions holding a real token (the ones compared)."""
        return self._tokens(config)[1].bool()

    def _tokens(self, config: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.padded:
            return tiny.token_batch(config, self.bsz, self.seq_len, seed=self.seed)
        return tiny.token_batch(
            config,
            self.bsz,
            self.seq_len,
            pads=self.pads,
            side=self.pad_side,
            seed=self.seed,
            right_pads=self.right_pads,
        )


def labels_for(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels = the tokens, -100 at pads *and* at the first real token after a pad.

    The causal-LM loss predicts label ``t`` from the logits at ``t - 1``; after a left pad that is a
    pad query whose logits are whatever an implementation makes of a query that may see nothing
    (no defined answer). Ignoring that one label keeps the loss a function of real positions only.
    """
    labels = ids.masked_fill(mask == 0, -100)
    after_pad = torch.zeros_like(mask, dtype=torch.bool)
    after_pad[:, 1:] = (mask[:, :-1] == 0) & (mask[:, 1:] == 1)
    return labels.masked_fill(after_pad, -100)


def gpu_phases() -> tuple[object, ...]:
    """Hypothesis phases for the GPU tier: all but shrinking (and explain), unless
    ``GEMMA2_REGRESS_GPU_SHRINK=1``. On a GPU every shrink step may be a new shape, i.e. a compile;
    a failing example is printed with its full case, ready to pin with ``@example``."""
    import os

    from hypothesis import Phase

    if os.environ.get("GEMMA2_REGRESS_GPU_SHRINK") == "1":
        return tuple(Phase)
    return (Phase.explicit, Phase.reuse, Phase.generate, Phase.target)


def budget(fraction: float, at_least: int = 1) -> int:
    """A share of the active Hypothesis profile's ``max_examples`` (the main property takes it all; the
    costlier ones a fraction), so ``--hypothesis-profile`` scales the whole GPU tier together."""
    from hypothesis import settings

    return max(at_least, int(settings().max_examples * fraction))


def max_rows(seq_len: int, table: tuple[tuple[int, int], ...] = MAX_ROWS_BY_LENGTH) -> int:
    """The largest batch drawn at ``seq_len`` (memory of the float64 reference)."""
    for upto, rows in table:
        if seq_len <= upto:
            return rows
    return 1


@st.composite
def model_cases(
    draw: st.DrawFn,
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16"),
    lengths: tuple[int, ...] = LENGTHS,
    modes: tuple[str, ...] = MODES,
    inits: tuple[str, ...] = ("large", "default"),
    max_bsz: int = 8,
    rows_table: tuple[tuple[int, int], ...] = MAX_ROWS_BY_LENGTH,
    window: int = W,
) -> ModelCase:
    """Cases for the logits-and-loss property: every axis (batch, length, padding, mode, labels, dtype),
    shapes from a short list."""
    seq_len = draw(st.sampled_from(lengths))
    cap = min(max_bsz, max_rows(seq_len, rows_table))
    bsz = draw(st.sampled_from([b for b in BATCH_SIZES if b <= cap]))
    mode = draw(st.sampled_from(modes))
    with_labels = draw(st.sampled_from([True, True, False]))
    # Padding is where the mask paths differ (Unsloth's per-call 4-D masks): drawn three times in four.
    kind = draw(st.sampled_from(["left", "right", "none", "ones", "left", "right", "both", "both"]))
    if kind in ("left", "both") and mode == "train" and with_labels:
        kind = "right"  # Unsloth drops the mask in training with labels (see ModelCase)
    with_mask = kind != "none"
    padding: dict[str, str | tuple[int, ...]] = {"pad_side": "none", "pads": (), "right_pads": ()}
    if kind in ("left", "right", "both"):
        # Each row's pad count on its own, so any row may be the longest; a forced pad or a fully
        # padded row goes to a drawn row, not a fixed one.
        totals = [draw(pad_counts(seq_len, window)) for _ in range(bsz)]
        if bsz > 1 and draw(st.booleans()):
            totals[draw(st.integers(0, bsz - 1))] = seq_len  # one row entirely padding
        if not any(totals):
            totals[draw(st.integers(0, bsz - 1))] = min(7, seq_len - 1)
        padding = {"pad_side": kind, "pads": tuple(totals), "right_pads": ()}
        if kind == "both":  # each row's pads split between its ends at a drawn point
            lefts = tuple(draw(st.integers(0, t)) for t in totals)
            rights = tuple(t - left for t, left in zip(totals, lefts, strict=True))
            padding = {"pad_side": "both", "pads": lefts, "right_pads": rights}
    return ModelCase(
        bsz=bsz,
        seq_len=seq_len,
        with_mask=with_mask,
        with_labels=with_labels,
        mode=mode,
        dtype=draw(st.sampled_from(dtypes)),
        init=draw(st.sampled_from(inits)),
        seed=draw(st.integers(0, 2**16)),
        **padding,
    )


def pad_counts(seq_len: int, window: int = W) -> st.SearchStrategy[int]:
    """A row's pad count: none, one, a few, or enough to leave the row just across the window (W+1
    real tokens), at it (W) or just inside it (W-1), or half the length; shrinks to none."""
    special = [0, 1, 7, 64, seq_len // 2]
    if seq_len > window:
        special += [seq_len - window - 1, seq_len - window, seq_len - window + 1]
    else:
        special.append(3)
    return st.sampled_from(sorted({p for p in special if 0 <= p < seq_len}))


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """Sequences packed into one row, as a padding-free / packing collator hands them to the model
    (TRL's ``SFTTrainer`` with ``packing=True`` and Unsloth's collator wrapper): ``input_ids``
    ``(1, total)``, ``position_ids`` restarting at 0 for each sequence, ``packed_seq_lengths`` (int32,
    one per sequence), and ``labels`` = the tokens, -100 at each sequence's first token (its predictor
    is the previous sequence's last token: no defined answer). ``rows`` keeps each sequence alone,
    ``(1, n_i)``, for the reference, which runs each one by itself."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    packed_seq_lengths: torch.Tensor
    labels: torch.Tensor
    rows: tuple[torch.Tensor, ...]

    @classmethod
    def make(cls, config: object, lengths: tuple[int, ...], seed: int = 0) -> PackedBatch:
        """Random plain-token sequences of ``lengths`` (``tiny.token_batch``, seeds ``seed``, ``seed + 1``, ...)."""
        if not lengths or min(lengths) < 2:
            raise ValueError(f"a pack needs sequences of 2 or more tokens, got {lengths}")
        rows = [tiny.token_batch(config, 1, n, seed=seed + i)[0] for i, n in enumerate(lengths)]
        return cls.of(torch.cat(rows, dim=1), list(lengths))

    @classmethod
    def of(cls, ids: torch.Tensor, lengths: list[int]) -> PackedBatch:
        """The pack of one row ``ids`` holding sequences of ``lengths`` tokens, in order."""
        if ids.shape[0] != 1 or sum(lengths) != ids.shape[1]:
            raise ValueError(f"a pack is one row of sum(lengths) tokens: {tuple(ids.shape)}, {lengths}")
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        labels = ids.clone()
        labels[0, positions[0] == 0] = -100
        rows = tuple(torch.split(ids, lengths, dim=1))
        return cls(ids, positions, torch.tensor(lengths, dtype=torch.int32), labels, rows)

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor]) -> PackedBatch:
        """The pack a collator made: one row, its sequences given by ``packed_seq_lengths`` (Unsloth's
        collator wrapper) or else by where ``position_ids`` restart at 0 (TRL's padding-free collator);
        labels as ``of`` sets them."""
        ids = batch["input_ids"].cpu()
        if "packed_seq_lengths" in batch:
            lengths = [int(n) for n in batch["packed_seq_lengths"]]
        elif "position_ids" in batch and batch["position_ids"].shape[0] == 1:
            starts = [*(batch["position_ids"][0].cpu() == 0).nonzero().flatten().tolist(), ids.shape[1]]
            lengths = [b - a for a, b in itertools.pairwise(starts)]
        else:
            raise ValueError(
                f"not a packed batch: neither packed_seq_lengths nor one row of position_ids in {sorted(batch)}"
            )
        return cls.of(ids, lengths)

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.packed_seq_lengths)

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """What the collator adds besides ``input_ids`` and ``labels``."""
        return {"position_ids": self.position_ids, "packed_seq_lengths": self.packed_seq_lengths}

    def short(self) -> str:
        return f"packed{list(self.lengths)} total{sum(self.lengths)}"
