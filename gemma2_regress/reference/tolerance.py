"""The one tolerance rule, used by every comparison in the suite, and the rounding bounds it rests on.

    err(x)  = |x - golden|                 elementwise, over the compared positions, in float64
    passes  iff  target is finite everywhere  and  err(target) <= K * max err(baseline) + floor

``golden`` is the oracle in float64; ``baseline`` is the same naive math in the target's dtype, so
``max err(baseline)`` measures what that precision costs on *this* input. A correct kernel lands
near ratio 1 against it (it rounds differently, not worse); a wrong mask, scale or cap moves the
output by the order of the values themselves. K = 4 leaves room for a kernel that reorders its
reductions (GPU tiling); ``docs/oracle.md`` has the measured ratios behind it.

The floor is what the arithmetic itself allows a correct target where the baseline is accurate by
luck. For an attention output in float32 or float64 it is ``rounding.rounding_bound``: the worst case of
every rounding of these very inputs, which no correct implementation of the steps exceeds on any
CPU or GPU (a few 1e-4 of |v| in float32 at logits near the cap; any semantic slip is of the order
of |v|). In bfloat16 and float16 that worst case bounds nothing (``n u`` reaches 1 within a few
hundred keys), so there the floor is ``rounding.half_rounding_bound``: the worst case for an
implementation that accumulates in float32 and rounds each step once, each key's logit error
weighed by its softmax weight (near the cap one bfloat16 logit rounds by 0.2, more than a lucky
baseline's whole error; docs/tolerance.md). Model-level outputs,
which pass through Unsloth's own kernels, use ``model_floor`` (``MODEL_FLOOR`` plus a drift linear
in the rotary position); gradients use ``K_GRAD`` (sums over
every query and key, reordered freely). NaN or inf in the target always fails, also at padded
positions: a NaN there would poison the next layer through ``0 * NaN``.
"""

from __future__ import annotations

import dataclasses

import torch

from gemma2_regress.reference.rounding import half_rounding_bound, rounding_bound

K = 4.0
K_GRAD = 8.0  # 2K: a gradient sums over every query and key of the batch (docs/gpu.md measures it)
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 4e-3}
# Logits |x| <= 30 after the final cap: Unsloth's Triton RMSNorm / RoPE / GeGLU, its batch-size
# specialised compiled attention and in-place inference path round differently from eager PyTorch
# even in float32 (measured on an H200, docs/gpu.md); a semantic bug moves logits by O(0.1..1).
# Gradients and the window-boundary probe keep FLOOR: the probe's "no change" must be exact.
MODEL_FLOOR = {torch.float64: 1e-10, torch.float32: 5e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
# Every implementation rounds the rotary angle p * w in float32 (transformers too, for its float64
# golden), so two correct ones turn q and k apart by up to ~u32 p w: their logits drift apart linearly
# in the position p (H200, float32, "large" tiny model: 2.7e-8 to 4.3e-8 per position; docs/tolerance.md).
MODEL_DRIFT = 1.2e-7  # per position: MODEL_FLOOR[float32] per 4096 positions, 3x the measured slope


def model_floor(dtype: torch.dtype, positions: int | torch.Tensor) -> float | torch.Tensor:
    """The whole-model floor at rotary position(s) ``positions``: ``MODEL_FLOOR[dtype] + MODEL_DRIFT * p``
    (for a loss, or anything that mixes positions, its largest position)."""
    if isinstance(positions, torch.Tensor):
        return MODEL_FLOOR[dtype] + MODEL_DRIFT * positions.to(torch.float64)
    return MODEL_FLOOR[dtype] + MODEL_DRIFT * positions


@dataclasses.dataclass
class Comparison:
    """The measurements behind one verdict, at the compared element nearest its bound (``where``):
    ``ratio`` is err(target) / (K * max err(baseline) + floor) there, 1.0 being at the bound."""

    err_target: float  # the largest err(target) anywhere
    err_baseline: float  # the largest err(baseline)
    bound: float  # the bound at ``where``
    finite: bool
    where: tuple[int, ...] | None
    ratio: float

    @property
    def ok(self) -> bool:
        return self.finite and self.ratio <= 1.0

    @property
    def kind(self) -> str:
        """``ok``, ``nan`` (non-finite output) or ``mismatch``."""
        return "ok" if self.ok else ("nan" if not self.finite else "mismatch")

    def describe(self) -> str:
        return (
            f"{self.kind}: err(target)={self.err_target:.3g} err(baseline)={self.err_baseline:.3g} "
            f"bound={self.bound:.3g} ratio={self.ratio:.3g} worst at {self.where}"
        )


def compare(
    target: torch.Tensor,
    golden: torch.Tensor,
    baseline: torch.Tensor,
    *,
    dtype: torch.dtype,
    valid: torch.Tensor | None = None,
    k: float = K,
    floor: float | torch.Tensor | None = None,
) -> Comparison:
    """Measure ``target`` against ``golden`` and ``baseline``; ``valid`` selects compared positions.

    All three share a shape whose leading dims ``valid`` (bool) broadcasts over, e.g. outputs
    ``(b, q, features)`` with ``valid`` ``(b, q)``. ``floor`` overrides ``FLOOR[dtype]``: a number
    or a tensor that broadcasts to the outputs' shape (``attention_floor``, ``model_floor``).
    """
    if target.shape != golden.shape or baseline.shape != golden.shape:
        raise ValueError(
            f"shape mismatch: target {tuple(target.shape)}, golden {tuple(golden.shape)}, "
            f"baseline {tuple(baseline.shape)}"
        )
    finite = bool(torch.isfinite(target).all())
    # On the target's device: float64 subtraction, division and max round alike on a GPU and a host, and
    # on the host three logits of 2 x 16384 x 512 took 0.5 s per comparison (2 cores; docs/gpu.md).
    dev = target.device
    g = golden.detach().to(dev, torch.float64)
    dt = (target.detach().to(torch.float64) - g).abs_()
    db = (baseline.detach().to(dev, torch.float64) - g).abs_()
    del g
    if valid is not None:
        sel = valid.to(dev).bool()
        while sel.dim() < dt.dim():
            sel = sel[..., None]
        dt = dt.masked_fill(~sel, 0.0)
        db = db.masked_fill(~sel, 0.0)
    dt = torch.nan_to_num(dt, nan=float("inf"))
    if not dt.numel():
        return Comparison(0.0, 0.0, 0.0, finite, None, 0.0 if finite else float("inf"))
    err_b = float(db.max())
    fl = FLOOR[dtype] if floor is None else floor
    bound = (k * err_b + torch.as_tensor(fl, dtype=torch.float64).to(dev)).expand_as(dt)
    ratios = torch.where(dt == 0, 0.0, dt / bound)  # 0 / 0 (an exact element at a zero bound) is fine
    at = int(ratios.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(at), dt.shape))
    ratio = float(ratios.flatten()[at]) if finite else float("inf")
    return Comparison(float(dt.max()), err_b, float(bound.flatten()[at]), finite, where, ratio)


def attention_floor(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scalar: float,
    softcap: float | None,
    window: int | None,
    key_valid: torch.Tensor | None = None,
    dtype: torch.dtype,
    extra_keys: int = 0,
) -> float | torch.Tensor:
    """The floor of the rule for an attention output in ``dtype`` on these inputs (the module docstring):
    ``rounding_bound`` (at least ``FLOOR``) in float32 / float64, ``half_rounding_bound`` in half precision."""
    kw = dict(scalar=scalar, softcap=softcap, window=window, key_valid=key_valid, extra_keys=extra_keys)
    if dtype not in (torch.float32, torch.float64):
        return half_rounding_bound(q, k, v, dtype=dtype, **kw)
    return rounding_bound(q, k, v, dtype=dtype, **kw).clamp(min=FLOOR[dtype])
