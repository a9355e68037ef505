"""The one tolerance rule, used by every comparison in the suite.

    err(x)  = max |x - golden|            over the compared positions, in float64
    passes  iff  target is finite everywhere  and  err(target) <= K * err(baseline) + FLOOR[dtype]

``golden`` is the oracle in float64; ``baseline`` is the same naive math in the target's dtype, so
``err(baseline)`` measures what that precision costs on *this* input. A correct kernel in the same
dtype lands near ratio 1 (it rounds differently, not worse); a wrong mask, scale or cap shows up
as an error of order of the values themselves, far above any K.

Why these constants: on CPU Unsloth's kernels (fp32/bf16/fp16) stayed at err(target) <=
1.0 * err(baseline) + a few ulps across the CI profile (worst ratio to the bound 0.25, `nox -s cpu`,
reports/cpu/summary.json), and the oracle vs transformers' eager Gemma-2 at 0.63. K = 4 leaves room for
a kernel that reorders its reductions (GPU tiling) without admitting a semantic error, which is of
the order of the values themselves (a window off by one: ratio 45 in the layer-by-layer fixture
check, 9.9e5 in the 2026.10.1-5 bug found by bisecting, docs/bisect.md). The
floor covers inputs where the baseline is exact by luck (err(baseline) ~ 0): a few ulps of an
O(1) output in each dtype. Gradients get ``K_GRAD`` (reductions over kv_len are
longer and reordered more freely). Measured on an H200 (Unsloth 2026.10.9, the whole GPU tier
twice, docs/gpu.md runs 9 and 10: 11 training steps each of the tiny model past the window, fp32,
bf16 and fp16): the worst gradient error was 0.31 of the K_GRAD bound (fp32; fp16 0.11, bf16 0.016),
i.e. 0.63 of a bound with K. K_GRAD stays 2K: a gradient is a sum over every query and key, and 3x
headroom over the worst drawn case is kept for shapes not yet drawn; the semantic bugs the kill
matrix plants are all caught by forward properties (docs/mutants.md), so this rule need not be the
tight one. NaN or inf in the target always fails, also at padded
positions: a NaN there would poison the next layer through ``0 * NaN``.
"""

from __future__ import annotations

import dataclasses

import torch

K = 4.0
K_GRAD = 8.0
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 4e-3}
# Whole-model comparisons (logits |x| <= 30 after the final cap, losses): Unsloth runs its own
# Triton RMSNorm / RoPE / GeGLU kernels, a batch-size-specialised compiled attention and an
# in-place inference path, which round differently from eager PyTorch even in float32. Measured
# on an H200 (Unsloth 2026.10.9, fp32, the "large" tiny model whose logits reach tanh's bend):
# first-step generation logits 5.6e-5 from float64 (eager fp32: 1.0e-6), a row inside a batch of 2
# 1.54e-4 from the row alone (eager fp32: 7.0e-6), both at positions far inside the window.
# The fp32 floor sits ~3x above the largest; a semantic bug (mask, window, cap, scale, rows mixed)
# moves logits by O(0.1..1). bf16/fp16 floors are a few ulps of |logit| ~ 30.
# Gradients and the window-boundary probe keep the kernel FLOOR: the probe's "no change" must be exact.
MODEL_FLOOR = {torch.float64: 1e-10, torch.float32: 5e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@dataclasses.dataclass
class Comparison:
    """The measurements behind one verdict; ``ratio`` is err(target) / (K * err(baseline) + floor)."""

    err_target: float
    err_baseline: float
    bound: float
    finite: bool
    where: tuple[int, ...] | None

    @property
    def ratio(self) -> float:
        return self.err_target / self.bound if self.finite else float("inf")

    @property
    def ok(self) -> bool:
        return self.finite and self.err_target <= self.bound

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
    floor: float | None = None,
) -> Comparison:
    """Measure ``target`` against ``golden`` and ``baseline``; ``valid`` selects compared positions.

    All three share a shape whose leading dims ``valid`` (bool) broadcasts over, e.g. outputs
    ``(b, q, features)`` with ``valid`` ``(b, q)``. ``floor`` overrides ``FLOOR[dtype]`` (model
    level: ``MODEL_FLOOR[dtype]``).
    """
    if target.shape != golden.shape or baseline.shape != golden.shape:
        raise ValueError(
            f"shape mismatch: target {tuple(target.shape)}, golden {tuple(golden.shape)}, "
            f"baseline {tuple(baseline.shape)}"
        )
    finite = bool(torch.isfinite(target).all())
    t = target.detach().to(torch.float64).cpu()
    g = golden.detach().to(torch.float64).cpu()
    b = baseline.detach().to(torch.float64).cpu()
    dt = (t - g).abs()
    db = (b - g).abs()
    if valid is not None:
        sel = valid.cpu().bool()
        while sel.dim() < dt.dim():
            sel = sel[..., None]
        dt = dt.masked_fill(~sel, 0.0)
        db = db.masked_fill(~sel, 0.0)
    dt = torch.nan_to_num(dt, nan=float("inf"))
    err_t = float(dt.max()) if dt.numel() else 0.0
    err_b = float(db.max()) if db.numel() else 0.0
    where = tuple(int(i) for i in torch.unravel_index(dt.argmax(), dt.shape)) if dt.numel() else None
    bound = k * err_b + (FLOOR[dtype] if floor is None else floor)
    return Comparison(err_t, err_b, bound, finite, where)
