"""The one tolerance rule, used by every comparison in the suite, and the rounding bounds it rests on.

    err(x)  = |x - golden|                 elementwise, over the compared positions, in float64
    passes  iff  target is finite everywhere  and  err(target) <= K * max err(baseline) + floor

``golden`` is the oracle in float64; ``baseline`` is the same naive math in the target's dtype, so
``max err(baseline)`` measures what that precision costs on *this* input. A correct kernel lands
near ratio 1 against it (it rounds differently, not worse); a wrong mask, scale or cap moves the
output by the order of the values themselves. K = 4 leaves room for a kernel that reorders its
reductions (GPU tiling); ``docs/oracle.md`` has the measured ratios behind it.

The floor is what the arithmetic itself allows a correct target where the baseline is accurate by
luck. For an attention output in float32 or float64 it is ``rounding_bound``: the worst case of
every rounding of these very inputs, which no correct implementation of the steps exceeds on any
CPU or GPU (a few 1e-4 of |v| in float32 at logits near the cap; any semantic slip is of the order
of |v|). In bfloat16 and float16 that worst case bounds nothing (``n u`` reaches 1 within a few
hundred keys), so there the floor is ``FLOOR``, a few ulps of an O(1) output, and the rule leans on
the baseline, whose own error is then large and spread over many elements. Model-level outputs,
which pass through Unsloth's own kernels, use ``MODEL_FLOOR``; gradients use ``K_GRAD`` (sums over
every query and key, reordered freely). NaN or inf in the target always fails, also at padded
positions: a NaN there would poison the next layer through ``0 * NaN``.
"""

from __future__ import annotations

import dataclasses

import torch

from . import masks

K = 4.0
K_GRAD = 8.0  # 2K: a gradient sums over every query and key of the batch (docs/gpu.md measures it)
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 4e-3}
# Logits |x| <= 30 after the final cap: Unsloth's Triton RMSNorm / RoPE / GeGLU, its batch-size
# specialised compiled attention and in-place inference path round differently from eager PyTorch
# even in float32 (measured on an H200, docs/gpu.md); a semantic bug moves logits by O(0.1..1).
# Gradients and the window-boundary probe keep FLOOR: the probe's "no change" must be exact.
MODEL_FLOOR = {torch.float64: 1e-10, torch.float32: 5e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


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
    (model level: ``MODEL_FLOOR[dtype]``) or a tensor of the outputs' shape (``attention_floor``).
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
    if not dt.numel():
        return Comparison(0.0, 0.0, 0.0, finite, None, 0.0 if finite else float("inf"))
    err_b = float(db.max())
    fl = FLOOR[dtype] if floor is None else floor
    bound = (k * err_b + torch.as_tensor(fl, dtype=torch.float64).cpu()).expand_as(dt)
    ratios = torch.where(dt == 0, 0.0, dt / bound)  # 0 / 0 (an exact element at a zero bound) is fine
    at = int(ratios.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(at), dt.shape))
    ratio = float(ratios.flatten()[at]) if finite else float("inf")
    return Comparison(float(dt.max()), err_b, float(bound.flatten()[at]), finite, where, ratio)


# --- The same arithmetic in another order ---------------------------------------------------------
# A metamorphic property (prefix, batch row, padded row, cached prefix) compares two runs of the
# oracle's own arithmetic whose sums are grouped differently: BLAS picks kernels by shape, CPU
# capability and thread count and promises nothing about the order. Neither run is exact, so the
# bound is the classic worst case of each step (Higham, "Accuracy and Stability of Numerical
# Algorithms", ch. 3), applied to the oracle's steps on the given inputs; two runs differ by at
# most twice it.


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u``: a correctly rounded operation in ``dtype`` has relative error at most ``u`` (eps / 2)."""
    return torch.finfo(dtype).eps / 2


def _gamma(n: float, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error bound of an n-term sum or dot product."""
    return n * u / (1 - n * u) if n * u < 1 else float("inf")


def logit_rounding_bound(
    q: torch.Tensor, k: torch.Tensor, *, scalar: float, softcap: float | None, dtype: torch.dtype
) -> torch.Tensor:
    """Bound on the error of each capped logit the oracle computes in ``dtype``, ``(bsz, heads, q, kv)``:
    ``gamma_{d+2}(u) s^-1/2 sum_e |q_e k_je|`` (the scaling and the d-term dot product) plus ``9 u t``
    (the cap is 1-Lipschitz; its divide, tanh within 4 ulps and multiply round at magnitude <= t)."""
    u = unit_roundoff(dtype)
    idx = torch.arange(q.shape[1], device=q.device) // (q.shape[1] // k.shape[1])
    s_abs = scalar**-0.5 * (q.double().abs() @ k.double()[:, idx].abs().transpose(-1, -2))
    return _gamma(q.shape[-1] + 2, u) * s_abs + (9 * u * softcap if softcap is not None else 0.0)


def rounding_bound(
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
) -> torch.Tensor:
    """Bound on ``|oracle.attention(..., dtype=dtype) - exact|`` for these inputs, ``(bsz, q_len, features)``.

    Any evaluation of the oracle's steps in ``dtype`` (softmax in float32, or float64 for float64)
    lies within this of the exact result, whatever order its sums take; ``extra_keys`` masked keys
    more (padding) only lengthen the sums. Per query row, with ``u`` the unit roundoff (``u_s`` the
    softmax's), ``n`` keys, ``delta`` the largest ``logit_rounding_bound`` among the keys it sees and
    ``R`` the range of its capped logits there:

        softmax   each weight moves by a factor in [e^-2delta, e^2delta], then by
                  eps = 2 (2 u_s (R + 2 delta) + 3 u_s) + gamma_n(u_s) + 2 u_s   (shift, exp, sum, divide)
        output    V (p + gamma_n(u) (1 + p)),  p = e^{2 delta} (1 + eps)(1 + u) - 1
                  (the cast of the weights, the n-term sum), V the largest |v| entry the row sees.

    Where ``n u >= 1`` (bf16 past 256 keys) the arithmetic promises nothing and the bound is ``inf``.
    A fully masked row (a padded query) averages every key uniformly; its bound covers that.
    """
    u = unit_roundoff(dtype)
    u_s = unit_roundoff(torch.float64 if dtype == torch.float64 else torch.float32)
    bsz, n_heads, q_len, d = q.shape
    kv_len = k.shape[2]
    n = kv_len + extra_keys
    idx = torch.arange(n_heads, device=q.device) // (n_heads // k.shape[1])
    kd = k.double()[:, idx]
    v_key = v.double()[:, idx].abs().amax(-1)[:, :, None, :]  # largest |v| entry of each key
    vis_all = masks.allowed(q_len, kv_len, window, key_valid, device=q.device)
    vis_all = vis_all[:, None] if vis_all.dim() == 3 else vis_all[None, None]
    ninf, pinf = torch.tensor(-float("inf")), torch.tensor(float("inf"))
    # Query rows per chunk: the float64 score matrices stay bounded at 8k tokens.
    rows = max(1, 2**24 // max(1, bsz * n_heads * kv_len))
    parts = []
    for lo in range(0, q_len, rows):
        qc = q[:, :, lo : lo + rows]
        vis = vis_all[:, :, lo : lo + rows].expand(bsz, n_heads, qc.shape[2], kv_len)
        raw = scalar**-0.5 * (qc.double() @ kd.transpose(-1, -2))
        capped = raw if softcap is None else softcap * torch.tanh(raw / softcap)
        none_seen = ~vis.any(-1)  # (b, h, rows): a fully masked row averages every key uniformly
        dlt = logit_rounding_bound(qc, k, scalar=scalar, softcap=softcap, dtype=dtype)
        delta = torch.where(vis, dlt, 0.0).amax(-1)  # 0 where every logit is the same masked constant
        r = torch.where(vis, capped, ninf).amax(-1) - torch.where(vis, capped, pinf).amin(-1)
        r = torch.where(none_seen, 0.0, r)
        v_row = torch.where(vis | none_seen[..., None], v_key, 0.0).amax(-1)
        eps = 2 * (2 * u_s * (r + 2 * delta) + 3 * u_s) + _gamma(n, u_s) + 2 * u_s
        p = torch.exp(2 * delta) * (1 + eps) * (1 + u) - 1
        parts.append(torch.where(v_row == 0, 0.0, v_row * (p + _gamma(n, u) * (1 + p))))  # 0 * inf is 0
    bound = torch.cat(parts, dim=2)  # (b, h, q)
    return bound.transpose(1, 2).repeat_interleave(d, dim=2)  # (b, q, h * d), as the oracle's output


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
    ``rounding_bound`` (at least ``FLOOR``) in float32 / float64, ``FLOOR[dtype]`` in half precision."""
    if dtype not in (torch.float32, torch.float64):
        return FLOOR[dtype]
    kw = dict(scalar=scalar, softcap=softcap, window=window, key_valid=key_valid, extra_keys=extra_keys)
    return rounding_bound(q, k, v, dtype=dtype, **kw).clamp(min=FLOOR[dtype])
