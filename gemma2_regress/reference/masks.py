"""Which keys a query may see: the causal, sliding-window and padding rules, stated once.

Convention (transformers 5.x ``sliding_window_overlay`` and Google's gemma_pytorch): a sliding
window of ``W`` lets the query at absolute position ``i`` see key ``j`` iff ``i - W < j <= i``,
i.e. ``W`` keys including itself. A global (``window=None``) layer lets it see every ``j <= i``.
The legacy ``AttentionMaskConverter(sliding_window=W)`` and FlashAttention's ``window_size=(W, 0)``
admit one key more (``i - W <= j <= i``); Unsloth corrects for that, and the window-boundary
tests pin which of the two a target implements.

With a cached prefix (``q_len < kv_len``) the queries are the *last* ``q_len`` positions: query row
``r`` sits at absolute position ``kv_len - q_len + r``. Padding is a per-row ``key_valid`` vector
(1 = real token, 0 = pad), as in a Hugging Face 2-D ``attention_mask``.
"""

from __future__ import annotations

import torch


def allowed(
    q_len: int,
    kv_len: int,
    window: int | None,
    key_valid: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boolean visibility: ``(q_len, kv_len)`` without padding, ``(bsz, q_len, kv_len)`` with it.

    ``key_valid`` is ``(bsz, kv_len)``; a padded key is invisible to every query of its row.
    ``rows=(r0, r1)`` / ``cols=(c0, c1)`` give only that block of the matrix (query rows r0..r1-1,
    keys c0..c1-1), as slicing the whole would, without building the whole.
    """
    if q_len > kv_len:
        raise ValueError(f"q_len ({q_len}) must not exceed kv_len ({kv_len})")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    r0, r1 = rows or (0, q_len)
    c0, c1 = cols or (0, kv_len)
    dev = key_valid.device if key_valid is not None else device
    i = torch.arange(kv_len - q_len + r0, kv_len - q_len + r1, device=dev)[:, None]  # absolute positions
    j = torch.arange(c0, c1, device=dev)[None, :]
    vis = j <= i
    if window is not None:
        # i - W < j against a (rows, 1) column: no (rows, keys) int64 difference, which dominated the
        # real-window kernel tests on CPU (docs/perf.md)
        vis = vis & (j > i - window)
    if key_valid is None:
        return vis
    return vis[None] & key_valid[:, c0:c1].bool()[:, None, :]


def key_span(q_len: int, kv_len: int, window: int | None, rows: tuple[int, int]) -> tuple[int, int]:
    """The keys ``(c0, c1)`` that query rows ``rows`` may see at most (before padding): causal up to the
    last row's position, and no further back than the window from the first row's."""
    first, last = kv_len - q_len + rows[0], kv_len - q_len + rows[1] - 1
    return (0 if window is None else max(0, first - window + 1), last + 1)


def additive(vis: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean visibility into an additive mask: 0 where visible, ``finfo(dtype).min`` where not.

    A finite minimum (not ``-inf``) is what transformers and Unsloth use, so that a fully masked
    row (a padded query) softmaxes to finite numbers instead of NaN.
    """
    # one pass over vis with two scalars: no zeros tensor and no negated copy (docs/perf.md)
    seen, hidden = (torch.tensor(v, dtype=dtype, device=vis.device) for v in (0.0, torch.finfo(dtype).min))
    return torch.where(vis, seen, hidden)


def padding_from_lengths(
    bsz: int, seq_len: int, pads: list[int], side: str, right_pads: list[int] | tuple[int, ...] = ()
) -> torch.Tensor:
    """A 2-D ``attention_mask`` (1 real, 0 pad) with ``pads[b]`` pad tokens on ``side`` of row ``b``;
    with ``side="both"``, ``pads[b]`` on the left and ``right_pads[b]`` on the right (the real tokens
    in between, contiguous). An empty ``pads`` or ``right_pads`` means no pad on that side."""
    if side not in ("left", "right", "both", "none"):
        raise ValueError(f"padding side must be 'left', 'right', 'both' or 'none', got {side!r}")
    if right_pads and side != "both":
        raise ValueError(f"right_pads given with side={side!r}; pass side='both'")
    mask = torch.ones(bsz, seq_len, dtype=torch.long)
    if side == "none":
        return mask
    lefts = list(pads) if side in ("left", "both") else []
    rights = list(pads) if side == "right" else list(right_pads)
    for b, p in enumerate(lefts):
        mask[b, :p] = 0
    for b, p in enumerate(rights):
        if p:
            mask[b, seq_len - p :] = 0
    return mask


def valid_queries(key_valid: torch.Tensor | None, q_len: int) -> torch.Tensor | None:
    """``(bsz, q_len)`` bool: the query rows whose own token is real (compared against the oracle)."""
    if key_valid is None:
        return None
    return key_valid[:, key_valid.shape[1] - q_len :].bool()
