"""The reference: Gemma-2 attention written out plainly, in float64 (golden) or any dtype (baseline).

    out = softmax(t * tanh((Q * s**-0.5) K^T / t) + mask) V        (per head, GQA by repeating K/V)

``s`` is ``query_pre_attn_scalar`` (Gemma-2 9B uses 256, not its head_dim), ``t`` the
``attn_logit_softcapping`` (50; ``None`` turns the cap off). Query head ``h`` reads kv head
``h // (n_heads // n_kv_heads)`` (K/V heads *repeated*, as ``repeat_kv`` does). Masks follow
``masks.allowed``. Written independently of Unsloth: explicit loops over nothing, no fused ops.
"""

from __future__ import annotations

import torch

from gemma2_regress.reference import masks


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scalar: float,
    softcap: float | None,
    window: int | None,
    key_valid: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    return_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention output ``(bsz, q_len, n_heads * head_dim)`` in ``dtype``.

    q: ``(bsz, n_heads, q_len, d)``; k, v: ``(bsz, n_kv_heads, kv_len, d)``; the queries are the
    last ``q_len`` positions of the ``kv_len`` keys. ``dtype=float64`` is the golden reference;
    the target's dtype gives the naive same-precision baseline of the tolerance rule (softmax is
    then taken in float32 and cast back, as every real implementation does).
    With ``return_scores`` the capped logits (before masking) come back too.
    """
    bsz, n_heads, q_len, d = q.shape
    n_kv = k.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv})")
    kv_len = k.shape[2]
    groups = n_heads // n_kv
    q, k, v = (x.to(dtype) for x in (q, k, v))
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q * scalar**-0.5) @ k.transpose(-1, -2)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    vis = masks.allowed(q_len, kv_len, window, key_valid, device=q.device)
    if vis.dim() == 3:
        vis = vis[:, None]  # broadcast over heads
    softmax_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    logits = scores.to(softmax_dtype).masked_fill(~vis, torch.finfo(softmax_dtype).min)
    probs = torch.softmax(logits, dim=-1).to(dtype)
    out = (probs @ v).transpose(1, 2).reshape(bsz, q_len, n_heads * d)
    return (out, scores) if return_scores else out
