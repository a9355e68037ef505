"""The reference: Gemma-2 attention written out plainly, in float64 (golden) or any dtype (baseline).

    out = softmax(t * tanh((Q * s**-0.5) K^T / t) + mask) V        (per head, GQA by repeating K/V)

``s`` is ``query_pre_attn_scalar`` (Gemma-2 9B uses 256, not its head_dim), ``t`` the
``attn_logit_softcapping`` (50; ``None`` turns the cap off). Query head ``h`` reads kv head
``h // (n_heads // n_kv_heads)`` (K/V heads *repeated*, as ``repeat_kv`` does). Masks follow
``masks.allowed``. Written independently of Unsloth: explicit loops over nothing, no fused ops.

Long sequences are taken ``query_block`` queries at a time, each block over only the keys its
queries may see (``masks.key_span``): a key outside that span has weight exactly 0 (its logit is
``finfo.min``, its ``exp`` underflows to 0), so leaving it out changes no weight, only which zeros
the sums add. A block with a query that sees no key at all (a padded query: every logit the same
minimum, so weights uniform over *every* key) is taken over every key, as the formula says.
"""

from __future__ import annotations

import torch

from gemma2_regress.reference import masks

# Queries a block: at 8k tokens and two heads a block's float64 temporaries are a few MB, which the
# allocator reuses, where larger blocks are mapped and page-faulted in anew each time (docs/perf.md); and
# the keys outside a block's window are not computed.
QUERY_BLOCK = 128


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
    query_block: int | None = QUERY_BLOCK,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention output ``(bsz, q_len, n_heads * head_dim)`` in ``dtype``.

    q: ``(bsz, n_heads, q_len, d)``; k, v: ``(bsz, n_kv_heads, kv_len, d)``; the queries are the
    last ``q_len`` positions of the ``kv_len`` keys. ``dtype=float64`` is the golden reference;
    the target's dtype gives the naive same-precision baseline of the tolerance rule (softmax is
    then taken in float32 and cast back, as every real implementation does).
    With ``return_scores`` the capped logits (before masking) come back too, for every key (one
    block). ``query_block=None`` takes all queries over all keys at once (the module docstring).
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
    q = q * scalar**-0.5
    step = q_len if return_scores or not query_block else query_block
    outs = []
    for r0 in range(0, q_len, step):
        rows = (r0, min(q_len, r0 + step))
        cols = (0, kv_len) if step == q_len else masks.key_span(q_len, kv_len, window, rows)
        vis = masks.allowed(q_len, kv_len, window, key_valid, device=q.device, rows=rows, cols=cols)
        if key_valid is not None and cols != (0, kv_len) and not bool(vis.any(-1).all()):
            cols = (0, kv_len)  # a query that sees no key weighs every key alike
            vis = masks.allowed(q_len, kv_len, window, key_valid, device=q.device, rows=rows)
        out, scores = _block(
            q[:, :, rows[0] : rows[1]],
            k[:, :, cols[0] : cols[1]],
            v[:, :, cols[0] : cols[1]],
            vis,
            softcap,
            dtype,
        )
        outs.append(out)
    out = torch.cat(outs, dim=2).transpose(1, 2).reshape(bsz, q_len, n_heads * d)
    return (out, scores) if return_scores else out


def _block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vis: torch.Tensor,
    softcap: float | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(capped Q K^T, masked) V, capped scores)`` for scaled queries and the keys ``vis`` covers."""
    scores = q @ k.transpose(-1, -2)
    if softcap is not None:  # t * tanh(x / t), each step in place on the fresh product (the same roundings)
        scores = scores.div_(softcap).tanh_().mul_(softcap)
    if vis.dim() == 3:
        vis = vis[:, None]  # broadcast over heads
    softmax_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    logits = scores.to(softmax_dtype).masked_fill(~vis, torch.finfo(softmax_dtype).min)
    probs = torch.softmax(logits, dim=-1).to(dtype)
    return probs @ v, scores
