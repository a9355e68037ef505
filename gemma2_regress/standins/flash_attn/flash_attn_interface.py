"""flash-attn 2.6.3's three attention entry points, as a plain PyTorch reference.

Semantics, as documented in Dao-AILab/flash-attention v2.6.3 (``flash_attn/flash_attn_interface.py``
docstrings; ``tests/test_flash_attn.py``'s ``attention_ref`` / ``construct_local_mask``; and
``csrc/flash_attn/flash_api.cpp`` / ``src/softmax.h`` where the docstrings are silent):

- Layouts: q ``(batch, seqlen_q, nheads, headdim)``, k / v ``(batch, seqlen_k, nheads_k, headdim)``;
  ``nheads`` a multiple of ``nheads_k``, query head ``h`` reads kv head ``h // (nheads // nheads_k)``.
- Scores: ``S = (q k^T) * softmax_scale`` (default ``headdim ** -0.5``); with ``softcap > 0``,
  ``S = softcap * tanh(S / softcap)``, applied before masking; ``softcap <= 0`` turns it off
  (``set_params_fprop``: ``if (softcap > 0.0)``).
- Which keys a query sees (bottom-right alignment): with ``window_size = (left, right)``, query ``i``
  sees key ``j`` iff ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``; a
  negative bound (-1) is unbounded on its side; ``causal=True`` sets ``right = 0``. So
  ``causal=True, window_size=(W - 1, 0)`` lets the last query see exactly its ``W`` last keys.
- A query row that sees no key outputs 0 (the docstrings' "If the row of the mask is all zero, the
  output will be zero"), and its log-sum-exp is ``+inf`` (``softmax.h``: ``sum == 0 -> INFINITY``).
- ``softmax_lse`` is the natural-log sum of ``exp(S)`` over the keys the row sees, float32.
- Output dtype = input dtype; this reference accumulates in float32.

Input checks: the public functions make every check of flash-attn 2.6.3 that needs no GPU, in its
order, raising its exception with its text, so a caller's mistake fails here as it would there.
From ``flash_api.cpp`` (``mha_fwd``, ``mha_varlen_fwd``, ``mha_fwd_kvcache``), each a ``RuntimeError``:

- ``FlashAttention only support fp16 and bf16 data type`` (q's dtype);
  ``query and key must have the same dtype``, ``query and value must have the same dtype``;
- ``batch size must be positive``; ``FlashAttention forward only supports head dimension at most 256``;
  ``Number of heads in key/value must divide number of heads in query``;
  ``Softcapping does not support dropout for now`` (``softcap > 0`` with ``dropout_p != 0``);
- ``CHECK_SHAPE``'s ``<name> must have shape (<its C++ arguments>)``, e.g. ``k must have shape
  (batch_size, seqlen_k, num_heads_k, head_size_og)`` (k / v against q, v against k; also given here
  for a tensor with the wrong number of dimensions) and ``CHECK_CONTIGUOUS``'s ``<name> must be contiguous``;
- varlen: ``cu_seqlens_q must have dtype int32`` (and ``_k``), contiguous, shape ``(batch_size + 1)``
  with ``batch_size = cu_seqlens_q.numel() - 1``;
- KV cache: ``If key is supplied, value must also be passed in``, ``If key is supplied, seqlens_k must
  also be passed in``, ``If key is supplied, it must have seqlen <= the seqlen of the KV cache`` (the
  kernel's seqlen_q: ``nheads // nheads_k`` for a one-token GQA query without window, which 2.6.3
  regroups), ``Key must have the same dtype as query``, ``Value must have the same dtype as query``;
  ``seqlens_k`` (``cache_seqlens``) and ``leftpad_k`` (``cache_leftpad``) int32, contiguous, shape
  ``(batch_size)``; ``cache_batch_idx must have dtype int32``.

And from the Python wrapper (``flash_attn_interface.py``): ``flash_attn_with_kvcache`` asserts
``k_cache must have contiguous last dimension`` (and ``v_cache``), an ``AssertionError``; q, k, v with
a non-contiguous last dimension are made contiguous (``maybe_contiguous``), not rejected; an int
``cache_seqlens`` becomes an int32 tensor of ``k_cache.shape[0]`` entries (so with a cache batch other
than q's it fails ``seqlens_k must have shape (batch_size)``). A head dimension that is not a multiple
of 8 is accepted: 2.6.3's forward pads it (``head_size_og % 8 != 0``) and the backward takes the padded.
``v`` without ``k`` is ignored, as there (the kernel reads ``v`` only ``if (k_.has_value())``).

Where this stand-in differs from the real package, on purpose:

- It runs on any device, the CPU included (the real kernels: CUDA, sm80+); the device checks
  (``q must be on CUDA``, ...) and the GPU-generation checks are not made.
- Its numerics are plain PyTorch in float32, not flash-attn's tiled online softmax; it takes the
  queries in blocks, each over only the keys some query of the block sees (the others weigh exactly 0).
- It checks what the kernels leave unchecked and the caller must get right (each a one-line
  ``ValueError`` / ``TypeError`` starting ``flash-attn stand-in:``): sequence lengths within
  ``max_seqlen_*``, ``cu_seqlens`` non-decreasing and within the tensors, cache lengths within the
  cache, ``cache_batch_idx`` one in-range row per batch row, inputs being tensors on one device,
  ``softcap`` a number and ``window_size`` two ints. It writes NaN into varlen output rows that no
  ``cu_seqlens_q`` segment covers (flash-attn leaves them unwritten: reading them is the caller's bug).
- ``return_attn_probs=True`` returns ``S_dmask = None``: what flash-attn 2.6.3 returns when
  ``dropout_p == 0`` (the probabilities exist only with dropout; newer releases return an empty tensor).
- Not implemented, each raising a one-line ``NotImplementedError`` naming the argument: ``dropout_p``
  other than 0, ``alibi_slopes``, ``rotary_cos`` / ``rotary_sin``, ``block_table`` (paged KV cache;
  raised first, as paging changes what the other checks read; the others after flash-attn's checks).
  ``deterministic`` is accepted (this forward is deterministic; so is flash-attn's), as are
  ``num_splits`` and ``rotary_interleaved`` (a performance knob, and an option of the rotary it lacks).
- The compiled extension, ``flash_attn_cuda`` (its name in 2.6.3; ``flash_attn_gpu`` from 2.7.1, which
  Unsloth tries first), is a stub: importing it works (Unsloth imports it to test the install), calling
  anything on it raises.
- A bound of -1 is unbounded and any other bound is read as given. ``flash_api.cpp`` first rewrites
  a bound ``>= seqlen_k`` to -1 and then (``set_params_fprop``) a right bound of -1 beside a left
  bound >= 0 to ``seqlen_k`` (``max_seqlen_k`` in varlen); with ``seqlen_q <= seqlen_k + 1`` or
  ``causal`` that changes no query's keys, but in a non-causal call with more queries than that the
  kernel's right edge differs (``mask.h``: ``min(seqlen_k, i + 1 + seqlen_k - seqlen_q + right)``).
  Not mirrored: Gemma-2's causal windows never meet it, nor do the real tests (their windows are drawn
  in ``[0, seqlen_k)``); the test reference ``construct_local_mask`` reads the bounds as given too.

One implementation serves both uses: each public function is its private twin (``_flash_attn_func``,
``_flash_attn_varlen_func``, ``_flash_attn_with_kvcache``) with ``any_dtype=False``. With
``any_dtype=True`` a twin also takes float32 and float64 (accumulating in float64 for float64), which
is the one check it relaxes; the suite's float32/float64 proofs call it so.
"""

from __future__ import annotations

import itertools
import math
import operator
import types
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

__all__ = [
    "flash_attn_cuda",
    "flash_attn_func",
    "flash_attn_gpu",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
]

MAX_HEADDIM = 256  # flash_api.cpp: "FlashAttention forward only supports head dimension at most 256"
FLASH_DTYPES = (torch.float16, torch.bfloat16)
PROOF_DTYPES = (*FLASH_DTYPES, torch.float32, torch.float64)  # what a twin takes with any_dtype=True


class _CudaExtensionStub(types.ModuleType):
    """Where flash-attn's compiled extension would be. Any public attribute is a function that raises,
    so a caller that reaches past the Python interface into the kernels fails loudly, naming the call."""

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        if name.startswith("_"):  # introspection (copy, pickle, inspect) must see a plain module
            raise AttributeError(name)

        def unavailable(*args: object, **kwargs: object) -> NoReturn:
            raise NotImplementedError(
                f"flash-attn stand-in: {self.__name__}.{name} is flash-attn's CUDA extension, which this "
                "pure-PyTorch reference does not have; call flash_attn_func / flash_attn_varlen_func / "
                "flash_attn_with_kvcache instead"
            )

        return unavailable


flash_attn_gpu = _CudaExtensionStub("flash_attn_2_cuda")
flash_attn_cuda = flash_attn_gpu  # the name in 2.6.3 (flash_attn_gpu from 2.7.1); Unsloth tries both


# --- flash-attn's own checks (flash_api.cpp, flash_attn_interface.py at v2.6.3) ---------------------


def _torch_check(ok: bool, message: str) -> None:
    """``TORCH_CHECK(ok, message)``: a failed check reaches Python as ``RuntimeError(message)``."""
    if not ok:
        raise RuntimeError(message)


def _check_shape(t: torch.Tensor, name: str, shape: Sequence[int], spelled: str) -> None:
    """``CHECK_SHAPE(name, <spelled>)``: its message names the C++ arguments, not their values."""
    _torch_check(tuple(t.shape) == tuple(shape), f"{name} must have shape ({spelled})")


def _check_ndim(t: torch.Tensor, name: str, spelled: str) -> None:
    """The number of dimensions ``CHECK_SHAPE`` expects (checked first here: the stand-in reads the sizes)."""
    _torch_check(t.dim() == spelled.count(",") + 1, f"{name} must have shape ({spelled})")


def _check_int32(t: torch.Tensor, name: str, length: int) -> None:
    """An index tensor: int32, ``CHECK_CONTIGUOUS``, ``CHECK_SHAPE(name, length)`` (``batch_size``)."""
    _torch_check(t.dtype == torch.int32, f"{name} must have dtype int32")
    _torch_check(t.is_contiguous(), f"{name} must be contiguous")
    _check_shape(t, name, (length,), "batch_size")


def _check_dtypes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, any_dtype: bool) -> None:
    _torch_check(
        q.dtype in (PROOF_DTYPES if any_dtype else FLASH_DTYPES),
        "FlashAttention only support fp16 and bf16 data type",
    )
    _torch_check(k.dtype == q.dtype, "query and key must have the same dtype")
    _torch_check(v.dtype == q.dtype, "query and value must have the same dtype")


def _check_sizes(batch_size: int, head_size: int, nheads: int, nheads_k: int) -> None:
    _torch_check(batch_size > 0, "batch size must be positive")
    _torch_check(head_size <= MAX_HEADDIM, "FlashAttention forward only supports head dimension at most 256")
    _torch_check(  # nheads_k == 0 would divide by zero in C++
        nheads_k > 0 and nheads % nheads_k == 0,
        "Number of heads in key/value must divide number of heads in query",
    )


def _check_softcap_dropout(softcap: float, dropout_p: float) -> None:
    if softcap > 0:
        _torch_check(dropout_p == 0, "Softcapping does not support dropout for now")


def _maybe_contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    """The Python wrapper's ``maybe_contiguous``: a non-contiguous last dimension is copied, not refused."""
    return t.contiguous() if t is not None and t.stride(-1) != 1 else t


# --- the stand-in's own checks and the arguments it does not implement -----------------------------


def _not_implemented(name: str, why: str) -> NoReturn:
    raise NotImplementedError(f"flash-attn stand-in: {name} {why}")


def _check_unsupported(dropout_p: float, alibi_slopes: torch.Tensor | None) -> None:
    if dropout_p != 0:
        _not_implemented("dropout_p", f"must be 0.0 (evaluation); got {dropout_p}")
    if alibi_slopes is not None:
        _not_implemented("alibi_slopes", "is not supported (pass None)")


def _tensors(**named: object) -> None:
    """What flash-attn's binding would refuse with a pybind TypeError: a tensor argument that is not one."""
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flash-attn stand-in: {name} must be a tensor, got {type(t).__name__}")


def _one_device(**named: torch.Tensor) -> None:
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        got = ", ".join(f"{name} on {t.device}" for name, t in named.items())
        raise ValueError(f"flash-attn stand-in: the tensors must be on one device, got {got}")


def _softcap(softcap: float) -> float:
    """The cap as a float; ``<= 0`` (or NaN) is off, as ``set_params_fprop``'s ``softcap > 0.0``."""
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"flash-attn stand-in: softcap must be a float (0.0 = off), got {softcap!r}")
    return float(softcap)


def _window_size(window_size: Sequence[int]) -> tuple[int, int]:
    """``(left, right)`` as given, any negative bound as -1 (the kernels treat all as unbounded)."""
    try:
        left, right = (int(operator.index(w)) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"flash-attn stand-in: window_size must be two ints (left, right), got {window_size!r}"
        ) from None
    return max(left, -1), max(right, -1)


def _window(window_size: Sequence[int], causal: bool) -> tuple[int, int]:
    """``(left, right)`` with -1 for an unbounded side; ``causal`` makes ``right`` 0."""
    left, right = _window_size(window_size)
    return (left, 0) if causal else (left, right)


def _values(t: torch.Tensor) -> list[int]:
    return [int(x) for x in t.tolist()]


# --- the computation --------------------------------------------------------------------------------


# Scores (batch x heads x queries x keys a query sees) per block of queries: float32 temporaries of 8 MB,
# which the allocator reuses and the caches hold, instead of GB-sized score matrices at 8k tokens.
BLOCK_ENTRIES = 2**21


def _key_span(
    rows: tuple[int, int], sq: int, window: tuple[int, int], key_start: list[int], key_end: list[int]
) -> tuple[int, int]:
    """The keys ``[lo, hi)`` that some query of ``rows`` sees in some batch row (``lo == hi``: none).

    Row ``r``'s query ``i`` sees positions ``key_start[r] + p``, ``0 <= p < n``, with
    ``at - left <= p <= at + right`` (``at = i + n - sq``); both bounds grow with ``i``, so the first
    query of the block gives the lowest key and the last the highest."""
    left, right = window
    lo, hi = math.inf, -math.inf
    for start, end in zip(key_start, key_end, strict=True):
        n = end - start
        p_lo = 0 if left < 0 else max(0, rows[0] + n - sq - left)
        p_hi = n if right < 0 else min(n, rows[1] - 1 + n - sq + right + 1)
        if p_lo < p_hi:
            lo, hi = min(lo, start + p_lo), max(hi, start + p_hi)
    return (0, 0) if lo == math.inf else (int(lo), int(hi))


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    softcap: float,
    window: tuple[int, int],
    key_start: list[int],
    key_end: list[int],
    query_block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q ``(b, sq, h, d)`` over k / v ``(b, sk, hk, d)``: ``(out in q.dtype, lse float32 (b, h, sq))``.

    Row ``r``'s keys are positions ``key_start[r] <= j < key_end[r]``, counted from ``key_start[r]``
    (``n = key_end - key_start`` of them); query ``i`` sits at key position ``i + n - sq`` (bottom-right)
    and sees the keys of ``window`` around it.

    Queries are taken ``query_block`` at a time (default: ``BLOCK_ENTRIES`` scores over the keys one
    query may see), each block over only the keys some query of it sees (``_key_span``): a key
    outside that span would weigh exactly 0 (its score is masked to -inf), so leaving it out changes
    no weight, only which zeros the sums add. A block whose queries see no key at all takes one key,
    masked, so that its rows go through the same arithmetic (output 0, lse +inf, gradient 0).
    """
    b, sq, h, _ = q.shape
    sk, hk = k.shape[1], k.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dev = q.device
    if sk == 0:  # no keys at all: every row sees none (amax below needs a key to reduce over)
        return torch.zeros_like(q), torch.full((b, h, sq), math.inf, device=dev)
    start = torch.tensor(key_start, device=dev).view(b, 1, 1)
    end = torch.tensor(key_end, device=dev).view(b, 1, 1)
    left, right = window

    groups = h // hk
    # Keys outside [key_start, key_end) are never read by the kernels (cache_leftpad moves the start, loads
    # past the end are predicated to zero): whatever they hold, NaN included, must not reach the output.
    j_all = torch.arange(sk, device=dev).view(1, sk, 1, 1)
    held = (j_all >= start.view(b, 1, 1, 1)) & (j_all < end.view(b, 1, 1, 1))
    k, v = torch.where(held, k, 0), torch.where(held, v, 0)
    qh = q.to(acc).transpose(1, 2)  # (b, h, sq, d)
    kh = k.to(acc).repeat_interleave(groups, dim=2).transpose(1, 2)  # head h -> kv head h // groups
    vh = v.to(acc).repeat_interleave(groups, dim=2).transpose(1, 2)
    if query_block is None:  # a row sees at most the keys of its window (all of them if a side is open)
        width = min(sk, left + right + 1) if left >= 0 and right >= 0 else sk
        query_block = BLOCK_ENTRIES // (b * h * max(1, width))
    step = max(1, query_block)
    outs, lses = [], []
    for r0 in range(0, sq, step):
        rows = (r0, min(sq, r0 + step))
        lo, hi = _key_span(rows, sq, window, key_start, key_end)
        if lo == hi:
            lo, hi = 0, 1
        i = torch.arange(*rows, device=dev).view(1, -1, 1)
        j = torch.arange(lo, hi, device=dev).view(1, 1, -1)
        at = i + (end - start) - sq  # the query's own position, counted from key_start
        pos = j - start
        seen = (j >= start) & (j < end)
        if left >= 0:
            seen = seen & (pos >= at - left)
        if right >= 0:
            seen = seen & (pos <= at + right)
        out, lse = _attend_block(
            qh[:, :, rows[0] : rows[1]], kh[:, :, lo:hi], vh[:, :, lo:hi], seen, scale=scale, softcap=softcap
        )
        outs.append(out)
        lses.append(lse)
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    lse = torch.cat(lses, dim=2) if len(lses) > 1 else lses[0]
    return out.transpose(1, 2).to(q.dtype), lse.squeeze(-1).to(torch.float32)


def _attend_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seen: torch.Tensor, *, scale: float, softcap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``(b, h, rows, d)`` over k / v ``(b, h, keys, d)`` where ``seen`` ``(b, rows, keys)``: ``(out, lse
    (b, h, rows, 1))`` in the accumulation dtype."""
    scores = (q @ k.transpose(-1, -2)) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~seen[:, None], -math.inf)
    # Softmax written out so that a row seeing no key gives weights 0 (not NaN) and a finite gradient.
    top = scores.amax(-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, 0.0)
    weights = torch.exp(scores - top)
    total = weights.sum(-1, keepdim=True)
    some = total > 0
    probs = weights / torch.where(some, total, 1.0)
    lse = torch.where(some, top + torch.log(torch.where(some, total, 1.0)), math.inf)
    return probs @ v, lse


# --- the implementation: one private twin per entry point -------------------------------------------


def _flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    *,
    any_dtype: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, None]:
    """``flash_attn_func``; ``any_dtype=True`` also takes float32 / float64 (the module docstring)."""
    _tensors(q=q, k=k, v=v)
    cap, window = _softcap(softcap), _window(window_size, causal)
    q, k, v = (_maybe_contiguous(t) for t in (q, k, v))
    # mha_fwd, in its order
    _check_dtypes(q, k, v, any_dtype)
    _check_ndim(q, "q", "batch_size, seqlen_q, num_heads, head_size_og")
    _check_ndim(k, "k", "batch_size, seqlen_k, num_heads_k, head_size_og")
    b, _, nheads, d = q.shape
    sk, nheads_k = k.shape[1], k.shape[2]
    _check_sizes(b, d, nheads, nheads_k)
    _check_softcap_dropout(cap, dropout_p)
    _check_shape(k, "k", (b, sk, nheads_k, d), "batch_size, seqlen_k, num_heads_k, head_size_og")
    _check_shape(v, "v", (b, sk, nheads_k, d), "batch_size, seqlen_k, num_heads_k, head_size_og")
    _one_device(q=q, k=k, v=v)
    _check_unsupported(dropout_p, alibi_slopes)
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    out, lse = _attend(q, k, v, scale=scale, softcap=cap, window=window, key_start=[0] * b, key_end=[sk] * b)
    return (out, lse, None) if return_attn_probs else out


def _flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: torch.Tensor | None = None,
    *,
    any_dtype: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, None]:
    """``flash_attn_varlen_func``; ``any_dtype=True`` also takes float32 / float64."""
    if block_table is not None:
        _not_implemented("block_table", "(paged KV) is not supported (pass None)")
    _tensors(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    cap, window = _softcap(softcap), _window(window_size, causal)
    q, k, v = (_maybe_contiguous(t) for t in (q, k, v))
    # mha_varlen_fwd, in its order
    _check_dtypes(q, k, v, any_dtype)
    _torch_check(cu_seqlens_q.dtype == torch.int32, "cu_seqlens_q must have dtype int32")
    _torch_check(cu_seqlens_k.dtype == torch.int32, "cu_seqlens_k must have dtype int32")
    _torch_check(cu_seqlens_q.is_contiguous(), "cu_seqlens_q must be contiguous")
    _torch_check(cu_seqlens_k.is_contiguous(), "cu_seqlens_k must be contiguous")
    nseq = cu_seqlens_q.numel() - 1
    _check_ndim(q, "q", "total_q, num_heads, head_size_og")
    _check_ndim(k, "k", "total_k, num_heads_k, head_size_og")
    nheads, d = q.shape[1], q.shape[2]
    total_k, nheads_k = k.shape[0], k.shape[1]
    _check_softcap_dropout(cap, dropout_p)
    _check_sizes(nseq, d, nheads, nheads_k)
    _check_shape(k, "k", (total_k, nheads_k, d), "total_k, num_heads_k, head_size_og")
    _check_shape(v, "v", (total_k, nheads_k, d), "total_k, num_heads_k, head_size_og")
    _check_shape(cu_seqlens_q, "cu_seqlens_q", (nseq + 1,), "batch_size + 1")
    _check_shape(cu_seqlens_k, "cu_seqlens_k", (nseq + 1,), "batch_size + 1")
    _one_device(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    _check_unsupported(dropout_p, alibi_slopes)
    cu_q, cu_k = _values(cu_seqlens_q), _values(cu_seqlens_k)
    for name, cu, total, longest in (
        ("q", cu_q, q.shape[0], max_seqlen_q),
        ("k", cu_k, total_k, max_seqlen_k),
    ):
        lengths = [b - a for a, b in itertools.pairwise(cu)]
        if cu[0] < 0 or any(n < 0 for n in lengths) or cu[-1] > total:
            raise ValueError(
                f"flash-attn stand-in: cu_seqlens_{name} must be non-decreasing within 0..{total}, got {cu}"
            )
        if max(lengths) > longest:
            raise ValueError(
                f"flash-attn stand-in: a sequence of {max(lengths)} exceeds max_seqlen_{name}={longest}"
            )
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    # Each sequence runs alone on its own slices: nothing of another sequence enters its arithmetic.
    outs, lses = [q.new_full((cu_q[0], *q.shape[1:]), math.nan)], [q.new_full((nheads, cu_q[0]), math.nan)]
    for s in range(nseq):
        qs, ks = q[cu_q[s] : cu_q[s + 1]], k[cu_k[s] : cu_k[s + 1]]
        o, lse = _attend(
            qs[None],
            ks[None],
            v[cu_k[s] : cu_k[s + 1]][None],
            scale=scale,
            softcap=cap,
            window=window,
            key_start=[0],
            key_end=[ks.shape[0]],
        )
        outs.append(o[0])
        lses.append(lse[0])
    tail = q.shape[0] - cu_q[-1]
    outs.append(q.new_full((tail, *q.shape[1:]), math.nan))
    lses.append(q.new_full((nheads, tail), math.nan))
    out = torch.cat(outs)
    if not return_attn_probs:
        return out
    return out, torch.cat(lses, dim=1).to(torch.float32), None


def _flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    cache_seqlens: int | torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: torch.Tensor | None = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
    *,
    any_dtype: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``flash_attn_with_kvcache``; ``any_dtype=True`` also takes float32 / float64."""
    if block_table is not None:
        _not_implemented("block_table", "(paged KV cache) is not supported (pass None)")
    _tensors(q=q, k_cache=k_cache, v_cache=v_cache)
    optional = dict(k=k, v=v, cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad)
    if not isinstance(cache_seqlens, int):
        optional["cache_seqlens"] = cache_seqlens
    _tensors(**{name: t for name, t in optional.items() if t is not None})
    cap, (left, right) = _softcap(softcap), _window_size(window_size)
    # the Python wrapper
    if k_cache.stride(-1) != 1:
        raise AssertionError("k_cache must have contiguous last dimension")
    if v_cache.stride(-1) != 1:
        raise AssertionError("v_cache must have contiguous last dimension")
    q, k, v = (_maybe_contiguous(t) for t in (q, k, v))
    if isinstance(cache_seqlens, int):  # bool included, as there
        cache_seqlens = torch.full(
            (k_cache.shape[0],), cache_seqlens, dtype=torch.int32, device=k_cache.device
        )
    cache_batch_idx = _maybe_contiguous(cache_batch_idx)
    # mha_fwd_kvcache, in its order
    _check_dtypes(q, k_cache, v_cache, any_dtype)
    _check_ndim(q, "q", "batch_size, seqlen_q, num_heads, head_size_og")
    _check_ndim(k_cache, "kcache", "batch_size_c, seqlen_k, num_heads_k, head_size_og")
    b, seqlen_q, nheads, d = q.shape
    batch_cache, seqlen_cache, nheads_k = k_cache.shape[:3]
    _check_sizes(b, d, nheads, nheads_k)
    # One query token of GQA without a window is regrouped into nheads // nheads_k query rows (the
    # kernel's seqlen_q, which the append check below compares); causal is moot for one token.
    if seqlen_q == 1 and nheads > nheads_k and left < 0 and right < 0 and d % 8 == 0 and alibi_slopes is None:
        seqlen_q = nheads // nheads_k
    spelled = "batch_size_c, seqlen_k, num_heads_k, head_size_og"
    _check_shape(k_cache, "kcache", (batch_cache, seqlen_cache, nheads_k, d), spelled)
    _check_shape(v_cache, "vcache", (batch_cache, seqlen_cache, nheads_k, d), spelled)
    new = 0
    if k is None:
        v = None  # ignored there too: the kernel reads v only when k is given
    else:
        if v is None:
            raise RuntimeError("If key is supplied, value must also be passed in")
        _torch_check(cache_seqlens is not None, "If key is supplied, seqlens_k must also be passed in")
        _torch_check(
            seqlen_q <= seqlen_cache, "If key is supplied, it must have seqlen <= the seqlen of the KV cache"
        )
        _torch_check(k.dtype == q.dtype, "Key must have the same dtype as query")
        _torch_check(v.dtype == q.dtype, "Value must have the same dtype as query")
        spelled = "batch_size, seqlen_knew, num_heads_k, head_size_og"
        _check_ndim(k, "k", spelled)
        new = k.shape[1]
        _check_shape(k, "k", (b, new, nheads_k, d), spelled)
        _check_shape(v, "v", (b, new, nheads_k, d), spelled)
    if cache_seqlens is not None:
        _check_int32(cache_seqlens, "seqlens_k", b)
    if cache_leftpad is not None:
        _check_int32(cache_leftpad, "leftpad_k", b)
    if rotary_cos is not None or rotary_sin is not None:
        _not_implemented("rotary_cos/rotary_sin", "(rotary inside the kernel) is not supported (pass None)")
    if cache_batch_idx is not None:
        _torch_check(cache_batch_idx.is_contiguous(), "cache_batch_idx must be contiguous")
        _torch_check(cache_batch_idx.dtype == torch.int32, "cache_batch_idx must have dtype int32")
    # the stand-in's own checks: what the kernel would read out of bounds
    present = dict(q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cache_seqlens=cache_seqlens)
    present |= dict(cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad)
    _one_device(**{name: t for name, t in present.items() if t is not None})
    _check_unsupported(0.0, alibi_slopes)
    if cache_batch_idx is None:
        rows = list(range(b))
    elif tuple(cache_batch_idx.shape) != (b,):
        raise ValueError(
            f"flash-attn stand-in: cache_batch_idx must have shape ({b},), got {tuple(cache_batch_idx.shape)}"
        )
    else:
        rows = _values(cache_batch_idx)
    if any(r < 0 or r >= batch_cache for r in rows):
        raise ValueError(
            f"flash-attn stand-in: cache_batch_idx {rows} (default: q's rows) must index the {batch_cache} "
            "cache rows"
        )
    lengths = [seqlen_cache] * b if cache_seqlens is None else _values(cache_seqlens)
    pads = [0] * b if cache_leftpad is None else _values(cache_leftpad)
    for row, (n, p) in enumerate(zip(lengths, pads, strict=True)):
        if not 0 <= p <= n or n + new > seqlen_cache:
            raise ValueError(
                f"flash-attn stand-in: row {row}: need 0 <= cache_leftpad ({p}) <= cache_seqlens ({n}) and "
                f"cache_seqlens + {new} new <= seqlen_cache ({seqlen_cache})"
            )
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    with torch.no_grad():
        if k is not None and v is not None:
            for row, (cache_row, n) in enumerate(zip(rows, lengths, strict=True)):
                k_cache[cache_row, n : n + new] = k[row]
                v_cache[cache_row, n : n + new] = v[row]
        index = torch.tensor(rows, device=k_cache.device)
        out, lse = _attend(
            q,
            k_cache[index],
            v_cache[index],
            scale=scale,
            softcap=cap,
            window=(left, 0) if causal else (left, right),
            key_start=pads,
            key_end=[n + new for n in lengths],
        )
    return (out, lse) if return_softmax_lse else out


# --- the interface: flash-attn 2.6.3's signatures, its dtypes ---------------------------------------


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, None]:
    """Dense attention: q ``(batch, seqlen_q, nheads, d)``, k / v ``(batch, seqlen_k, nheads_k, d)``,
    float16 or bfloat16 (flash-attn's checks, the module docstring).

    Query ``i`` sees key ``j`` iff ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``
    (``window_size = (left, right)``, -1 unbounded, ``causal`` means ``right = 0``); a row that sees no
    key gives 0. Returns ``out`` ``(batch, seqlen_q, nheads, d)`` in q's dtype, or with
    ``return_attn_probs`` ``(out, softmax_lse (batch, nheads, seqlen_q) float32, None)``.
    Differentiable (plain PyTorch autograd).
    """
    return _flash_attn_func(
        q,
        k,
        v,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
        any_dtype=False,
    )


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, None]:
    """Packed sequences: q ``(total_q, nheads, d)``, k / v ``(total_k, nheads_k, d)``, float16 or bfloat16;
    sequence ``s`` is rows ``cu_seqlens_q[s]:cu_seqlens_q[s+1]`` of q and ``cu_seqlens_k[s]:cu_seqlens_k[s+1]``
    of k / v (int32 ``(nseq + 1,)``). Each sequence attends only within itself, as ``flash_attn_func`` would
    on it alone (bottom-right alignment on its own two lengths). Returns ``out`` ``(total_q, nheads, d)``,
    or ``(out, softmax_lse (nheads, total_q) float32, None)``; rows no segment covers are NaN.
    """
    return _flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
        block_table,
        any_dtype=False,
    )


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    cache_seqlens: int | torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: torch.Tensor | None = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q ``(batch, seqlen_q, nheads, d)`` over a KV cache ``(batch_cache, seqlen_cache, nheads_k, d)``,
    float16 or bfloat16.

    Row ``b`` uses cache row ``cache_batch_idx[b]`` (default ``b``). If ``k`` / ``v``
    ``(batch, seqlen_new, nheads_k, d)`` are given they are first written *into the caches in place*
    at positions ``cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1``. Row ``b``'s keys are then
    positions ``cache_leftpad[b] <= j < cache_seqlens[b] + seqlen_new`` (``cache_seqlens`` an int or
    int32 ``(batch,)``, default the whole cache; ``cache_leftpad`` int32 ``(batch,)``, default 0),
    counted from ``cache_leftpad[b]``; the window and ``causal`` apply to those positions with
    bottom-right alignment, as in ``flash_attn_func``. Returns ``out`` ``(batch, seqlen_q, nheads, d)``,
    or ``(out, softmax_lse (batch, nheads, seqlen_q) float32)``. No backward (as flash-attn): runs
    under ``torch.no_grad``.
    """
    return _flash_attn_with_kvcache(
        q,
        k_cache,
        v_cache,
        k,
        v,
        rotary_cos,
        rotary_sin,
        cache_seqlens,
        cache_batch_idx,
        cache_leftpad,
        block_table,
        softmax_scale,
        causal,
        window_size,
        softcap,
        rotary_interleaved,
        alibi_slopes,
        num_splits,
        return_softmax_lse,
        any_dtype=False,
    )
