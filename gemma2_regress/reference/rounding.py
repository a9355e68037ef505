"""How far correct arithmetic may stray: the worst-case rounding of the oracle's steps on given inputs.

A metamorphic property (prefix, batch row, padded row, cached prefix) compares two runs of the
oracle's own arithmetic whose sums are grouped differently: BLAS picks kernels by shape, CPU
capability and thread count and promises nothing about the order. Neither run is exact, so the
bound is the classic worst case of each step (Higham, "Accuracy and Stability of Numerical
Algorithms", ch. 3), applied to the oracle's steps on the given inputs; two runs differ by at most
twice it. The tolerance rule's float32/float64 floor is the same bound (``tolerance.attention_floor``).
"""

from __future__ import annotations

import itertools
import math

import torch

from gemma2_regress.reference import masks


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
    idx = torch.arange(q.shape[1], device=q.device) // (q.shape[1] // k.shape[1])
    s_abs = scalar**-0.5 * (q.double().abs() @ k.double()[:, idx].abs().transpose(-1, -2))
    return _logit_bound(s_abs, q.shape[-1], softcap, unit_roundoff(dtype))


def _logit_bound(s_abs: torch.Tensor, d: int, softcap: float | None, u: float) -> torch.Tensor:
    """``logit_rounding_bound`` from ``s_abs = s^-1/2 sum_e |q_e k_je|``; increasing in ``s_abs``."""
    return _gamma(d + 2, u) * s_abs + (9 * u * softcap if softcap is not None else 0.0)


def _seen_span(hidden: torch.Tensor) -> slice:
    """The keys that some query of a chunk sees, ``hidden`` ``(..., rows, keys)``: the sums need no other
    (a hidden key's weight is exactly 0). Every key where a query sees none: it averages every key."""
    if bool(hidden.all(-1).any()):
        return slice(None)
    seen = (~hidden).flatten(0, -2).any(0).nonzero()
    return slice(int(seen[0]), int(seen[-1]) + 1)


# float64 entries of a part of the query rows (rounding_bound's chunks, half_rounding_bound's elementwise
# steps): 16 MB temporaries that the allocator reuses and the caches hold, where larger ones are mapped and
# page-faulted in anew each time (docs/perf.md).
PART_ENTRIES = 2**21


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
    kd_t, kd_abs_t = kd.transpose(-1, -2), kd.abs().transpose(-1, -2)
    v_key = v.double()[:, idx].abs().amax(-1)[:, :, None, :]  # largest |v| entry of each key
    hidden_all = ~masks.allowed(q_len, kv_len, window, key_valid, device=q.device)
    hidden_all = hidden_all[:, None] if hidden_all.dim() == 3 else hidden_all[None, None]
    cap = (lambda x: x) if softcap is None else (lambda x: softcap * torch.tanh(x / softcap))
    rows = max(1, PART_ENTRIES // max(1, bsz * n_heads * kv_len))  # query rows per chunk
    parts = []
    for lo in range(0, q_len, rows):
        qc = q[:, :, lo : lo + rows].double()
        span = _seen_span(hidden_all[:, :, lo : lo + rows])
        hidden = hidden_all[:, :, lo : lo + rows, span]  # broadcasts over batch and heads
        none_seen = hidden.all(-1)  # a fully masked row (a padded query) averages every key uniformly
        # Row maxima first, then the row's scalars: delta grows with S and the cap with the logit, so the
        # largest delta and the range R of the capped logits over the seen keys come from S's and the raw
        # logits' extremes (a few passes over the (rows, keys) matrices instead of one per step).
        # One (rows, keys) buffer, filled in place: a fresh 1 GB tensor per step costs its page faults.
        buf = qc @ kd_t[..., span]  # the raw logits, unscaled
        hi = buf.masked_fill_(hidden, -float("inf")).amax(-1)
        lo_raw = buf.masked_fill_(hidden, float("inf")).amin(-1)
        r = torch.where(none_seen, 0.0, cap(scalar**-0.5 * hi) - cap(scalar**-0.5 * lo_raw))
        s_max = torch.matmul(qc.abs(), kd_abs_t[..., span], out=buf).masked_fill_(hidden, 0.0).amax(-1)
        delta = torch.where(none_seen, 0.0, _logit_bound(scalar**-0.5 * s_max, d, softcap, u))
        unseen = hidden & ~none_seen[..., None]  # a fully masked row averages every key: all count
        v_row = buf.copy_(v_key[..., span].expand_as(buf)).masked_fill_(unseen, 0.0).amax(-1)
        eps = 2 * (2 * u_s * (r + 2 * delta) + 3 * u_s) + _gamma(n, u_s) + 2 * u_s
        p = torch.exp(2 * delta) * (1 + eps) * (1 + u) - 1
        parts.append(torch.where(v_row == 0, 0.0, v_row * (p + _gamma(n, u) * (1 + p))))  # 0 * inf is 0
    bound = torch.cat(parts, dim=2)  # (b, h, q)
    return bound.transpose(1, 2).repeat_interleave(d, dim=2)  # (b, q, h * d), as the oracle's output


EXACT_SPREAD = 2**26  # (batch x heads x queries x keys x features) up to which half_rounding_bound is exact


def half_rounding_bound(
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
    visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bound on ``|attention in dtype - exact|`` in bfloat16 / float16, ``(bsz, q_len, features)``,
    for an implementation that accumulates its dot products in float32 (every PyTorch CPU and CUDA
    half-precision matmul, flash-attn) and rounds each elementwise step to ``dtype`` once.

    ``rounding_bound``'s worst case lets every partial sum round in ``dtype`` and every logit error
    push every weight the same way; in half precision that bounds nothing. Here, per key ``j`` of a
    query row, with exact logit ``x_j``, ``S_j = s^-1/2 sum_e |q_e k_je|``, capped logit ``c_j``:

        logit     e_j = gamma_4(u) |x_j| + (1 + gamma_4(u)) (u + gamma_d(u32)(1 + u)) S_j
                  (the scale constant, the dot product, a post-scale and the divide by t each round
                  once; a pre-scaled Q rounds once; float32 accumulation), then through the cap
                  delta_j = sech^2((|x_j| - e_j)^+ / t) e_j + r (|c_j| + sech^2(..) e_j),
                  r = (1 + 4 u32)(1 + u)^2 - 1 (tanh within 4 float32 ulps, rounded; times t, rounded)
        weights   softmax of logits moved by eta_j, |eta_j| <= delta_j, is w_j e^eta_j / Z with
                  Z >= e^-delta (delta the row's largest), so, exactly,
                  |sum_j (w'_j - w_j) v_j| <= e^delta sum_j w_j (e^delta_j - 1) |v_j - out|
        the rest  the float32 softmax (eps as in ``rounding_bound``), the cast of the weights, the
                  float32 sum over ``n`` keys and the output's rounding: ((1 + eps)(1 + u)^2
                  (1 + gamma_n(u32)) - 1) V_f, V_f the largest |v| in that feature among seen keys

    ``w`` and ``out`` are the exact (float64) weights and output of these inputs. The first term
    weighs each key's logit error by its weight and its distance from the output, which is why it
    stays useful where the worst case is not: keys near the cap round by ``u t`` (0.2 in bfloat16 at
    t = 50), but only the keys that carry weight move the output. A fully masked row averages
    every key uniformly (every logit the same constant, no error). Above ``EXACT_SPREAD`` entries (e.g. 4k
    tokens) ``|v_j - out|`` becomes ``|v_j| + |out|`` and ``V_f`` every key's largest: looser, as fast as
    the golden itself. ``visible`` (bool, ``(q, kv)`` or
    ``(bsz, q, kv)``) replaces the mask of ``window`` / ``key_valid`` (flash-attn's two-sided windows).
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"half_rounding_bound is for bfloat16 / float16, not {dtype}; use rounding_bound")
    u, u32 = unit_roundoff(dtype), unit_roundoff(torch.float32)
    bsz, n_heads, q_len, d = q.shape
    kv_len = k.shape[2]
    n = kv_len + extra_keys
    g4, g_acc, g_n = _gamma(4, u), _gamma(d, u32), _gamma(n, u32)
    r_cap = (1 + 4 * u32) * (1 + u) ** 2 - 1
    idx = torch.arange(n_heads, device=q.device) // (n_heads // k.shape[1])
    kd, vd = k.double()[:, idx], v.double()[:, idx]
    vis_all = masks.allowed(q_len, kv_len, window, key_valid, device=q.device) if visible is None else visible
    vis_all = vis_all[:, None] if vis_all.dim() == 3 else vis_all[None, None]
    # |v_j - out| per key and feature is exact up to EXACT_SPREAD entries in all; above, it is bounded by
    # |v_j| + |out| (two matrix products, not a (rows, keys, features) tensor) and V_f by every key's |v|.
    exact = bsz * n_heads * q_len * kv_len * d <= EXACT_SPREAD
    # Query rows per chunk (2^24 entries): its seen span is the keys its rows' sums run over, and its matrix
    # products take it whole (a BLAS may group a product's sums by the shape it is given), their (rows, keys)
    # operands in four buffers made once. Between them the elementwise steps take `sub` rows at a time (the
    # last part up to 2 sub - 1): with `sub` a multiple of 64 a step's vector loop leaves the same elements
    # to its scalar tail (where e.g. cosh may round otherwise) as over the whole chunk, so on one thread the
    # bound is the one of whole chunks to the bit.
    per_row = max(1, bsz * n_heads * kv_len * (d if exact else 1))
    rows, sub = max(1, 2**24 // per_row), 64 * max(1, PART_ENTRIES // (64 * per_row))
    chunks = [(lo, min(q_len, lo + rows)) for lo in range(0, q_len, rows)]
    spans = [_seen_span(~vis_all[:, :, lo:end]) for lo, end in chunks]
    most = max((end - lo) * len(range(kv_len)[span]) for (lo, end), span in zip(chunks, spans, strict=True))
    buffers = q.new_empty((4, bsz * n_heads * most), dtype=torch.float64)
    v_all = vd.abs().amax(-2, keepdim=True)  # (b, h, 1, d): every key's largest |v| per feature
    parts = []
    for (lo, end), span in zip(chunks, spans, strict=True):
        qc = q[:, :, lo:end].double()
        kc, vc = kd[:, :, span], vd[:, :, span]
        shape = (bsz, n_heads, end - lo, kc.shape[2])
        x_all, s_all, w_all, a_all = (buf[: math.prod(shape)].view(shape) for buf in buffers)
        torch.matmul(qc, kc.transpose(-1, -2), out=x_all).mul_(scalar**-0.5)
        torch.matmul(qc.abs(), kc.abs().transpose(-1, -2), out=s_all).mul_(scalar**-0.5)
        steps = []
        cuts = [lo + i * sub for i in range(max(1, (end - lo) // sub))] + [end]
        for r0, r1 in itertools.pairwise(cuts):
            at = slice(r0 - lo, r1 - lo)
            vis = vis_all[:, :, r0:r1, span]  # broadcasts over batch and heads
            hidden = ~vis
            none_seen = hidden.all(-1, keepdim=True)
            # In place where a step's input is not needed again: each formula's operations, in its order,
            # without a fresh (rows, keys) tensor per step; the transcendental ones on contiguous tensors.
            x = x_all[:, :, at]
            e = s_all[:, :, at].mul_((1 + g4) * (u + g_acc * (1 + u))).add_(x.abs().mul_(g4))
            if softcap is None:
                c, dlt = x, e.contiguous()
            else:
                c = torch.tanh(x / softcap).mul_(softcap)
                se = x.abs().sub_(e).clamp_(min=0).div_(softcap).cosh_().pow_(-2).mul_(e)  # slope * e
                dlt = se.add_(c.abs().add_(se).mul_(r_cap))
            dlt.masked_fill_(hidden, 0.0)  # masked keys: one constant, exactly; weight 0
            c_seen = c.masked_fill(hidden, -float("inf"))
            hi = c_seen.amax(-1)
            w = torch.softmax(c_seen.masked_fill_(none_seen, 0.0), dim=-1)
            w_all[:, :, at] = w
            d_max = dlt.amax(-1)  # (b, h, rows)
            r = hi - c.masked_fill_(hidden, float("inf")).amin(-1)
            torch.mul(dlt.expm1_(), w, out=a_all[:, :, at])  # (b, h, rows, keys): w * expm1(delta)
            steps.append((at, vis, none_seen, d_max, r))
        out_all = w_all @ vc  # (b, h, rows, d), exact
        if not exact:
            moved_all = a_all @ vc.abs() + out_all.abs() * a_all.sum(-1, keepdim=True)
        for at, vis, none_seen, d_max, r in steps:
            out, a = out_all[:, :, at], a_all[:, :, at]
            if exact:
                spread = (vc[:, :, None] - out[:, :, :, None]).abs()  # (b, h, rows, keys, d): |v_j - out|
                moved = torch.exp(d_max)[..., None] * (a[..., None] * spread).sum(-2)
                seen = (vis | none_seen)[..., None]
                v_f = torch.where(seen, vc[:, :, None].abs(), 0.0).amax(-2)  # (b, h, rows, d)
            else:
                moved = torch.exp(d_max)[..., None] * moved_all[:, :, at]
                v_f = v_all.expand_as(out)
            r = torch.where(none_seen[..., 0], 0.0, r)
            eps = 2 * (2 * u32 * (r + 2 * d_max) + 3 * u32) + g_n + 2 * u32
            rest = ((1 + eps) * (1 + u) ** 2 * (1 + g_n) - 1)[..., None] * v_f
            parts.append(moved + rest)
    bound = torch.cat(parts, dim=2)  # (b, h, q, d)
    return bound.transpose(1, 2).reshape(bsz, q_len, n_heads * d)
