"""One Gemma-2 layer's attention run through Unsloth: ``Gemma2Attention_fast_forward`` on given q/k/v, on a
CPU too, called as ``LlamaModel_fast_forward``'s layer loop calls it.

``gemma2_attention(u, q, k, v, ...)`` works on the ``unsloth_adapter.Unsloth`` handle passed in
(``unsloth_adapter.load()``) and never imports ``unsloth`` itself (``unsloth_adapter`` is the one door).
Which path runs is Unsloth's: inside ``unsloth_flash.flash_path`` a layer without a mask takes
flash-attn. See docs/flash.md.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch

from gemma2_regress.unsloth_adapter import Unsloth


def gemma2_attention(
    u: Unsloth,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    config: Any,
    sliding: bool,
    causal_mask: Any = None,
    attention_mask: torch.Tensor | None = None,
    packed_seq_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unsloth's ``Gemma2Attention_fast_forward`` (one Gemma-2 layer's attention, looked up now) on q/k/v
    that are already rotated: ``q`` ``(b, h, s, d)``, ``k``/``v`` ``(b, kv_h, s, d)``, no KV cache. Returns
    ``(b, s, h * d)`` in the dtype Unsloth's code leaves it.

    Called with what ``LlamaModel_fast_forward``'s layer loop hands a layer (``unsloth/models/llama.py``,
    through ``Gemma2DecoderLayer_fast_forward``): ``use_sliding_window = sliding``; ``causal_mask``
    (None: the flash sentinels that loop sets for a batch without a mask when flash-attn has softcapping,
    ``True`` on sliding layers and ``False`` on global ones; else Unsloth's 4-D mask, ``Unsloth.eval_mask``);
    ``attention_mask`` (None after that loop dropped an all-ones mask; the 2-D padding mask of a padded
    evaluation batch); ``packed_seq_lengths`` (a packed / padding-free batch, as a collator passes it).
    Everything from there on is Unsloth's: the flash / slow choice, the flash-attn window, scale and cap,
    the dispatcher (FLASH_DENSE / FLASH_VARLEN, its float32 downcast) or the slow softcapping kernel.

    The layer itself is a stand-in carrying what that function reads: ``config`` (a ``Gemma2Config``:
    heads, kv heads, ``sliding_window``, ``query_pre_attn_scalar``, ``attn_logit_softcapping``),
    ``head_dim``, ``num_key_value_groups``, eval mode; Unsloth's own ``apply_qkv`` hook (what LoRA sets)
    returning q/k/v; a rotary cache of cos 1 and sin 0, so that RoPE leaves q and k as they are; and an
    ``o_proj`` that is the identity in q's dtype, applied by Unsloth's ``original_apply_o`` (exact in
    every dtype, and a dtype mismatch fails there as it fails in the model). On a CPU, where Unsloth's
    Triton RoPE kernel has no driver to run on, ``fast_rope_embedding`` is bound to the identity for the
    call (what that kernel computes with those tables); on CUDA Unsloth's kernel runs.
    """
    g = u.gemma2_module
    bsz, n_heads, q_len, head_dim = q.shape
    n_kv_heads = k.shape[1]

    def flat(x: torch.Tensor) -> torch.Tensor:  # (b, heads, s, d) -> (b, s, heads * d), as q_proj's
        return x.transpose(1, 2).reshape(bsz, q_len, -1)

    o_proj = torch.nn.Linear(n_heads * head_dim, n_heads * head_dim, bias=False)
    with torch.no_grad():
        o_proj.weight.copy_(torch.eye(n_heads * head_dim))
    layer = types.SimpleNamespace(
        config=config,
        head_dim=head_dim,
        num_key_value_groups=n_heads // n_kv_heads,
        # read instead of the config's by releases up to 2024.12 (transformers' Gemma2Attention had them)
        num_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        training=False,
        rotary_emb=_IdentityRope(head_dim, q_len, q.device),
        apply_qkv=lambda _self, _x: (flat(q), flat(k), flat(v)),
        # what Unsloth's model loading sets on every attention module (releases up to 2026.8.x call
        # ``self.apply_o`` without a fallback)
        apply_o=g.original_apply_o,
        o_proj=o_proj.to(device=q.device, dtype=q.dtype),
    )
    hidden = torch.zeros(bsz, q_len, config.hidden_size, dtype=q.dtype, device=q.device)
    kwargs: dict[str, Any] = {"use_sliding_window": sliding}
    if packed_seq_lengths is not None:
        kwargs["packed_seq_lengths"] = packed_seq_lengths
    mask = sliding if causal_mask is None else causal_mask
    rope = contextlib.nullcontext()
    if q.device.type == "cpu" and "fast_rope_embedding" in vars(g):
        rope = _bound(g, "fast_rope_embedding", lambda Q, K, *_a, **_k: (Q, K))
    with rope, torch.no_grad():
        out, _, _ = g.Gemma2Attention_fast_forward(
            layer, hidden, causal_mask=mask, attention_mask=attention_mask, **kwargs
        )
    return out


class _IdentityRope:
    """A rotary cache whose tables (cos 1, sin 0) make RoPE the identity, read as each release reads it:
    ``get_cached(seq_len, device_index)`` (2026.10.6 on), the per-device tables
    ``multi_gpu_cos_cached[device_index]`` / ``multi_gpu_sin_cached`` (2025.x to 2026.10.5), or one table
    ``cos_cached`` / ``sin_cached`` on the layer's ``device`` (releases up to mid-2025); ``length`` rows."""

    def __init__(self, head_dim: int, length: int, device: torch.device | str = "cpu") -> None:
        self.head_dim = head_dim
        self.length = length
        self.device = torch.device(device)
        self.multi_gpu_cos_cached = _PerDevice(lambda i: self.get_cached(self.length, i)[0])
        self.multi_gpu_sin_cached = _PerDevice(lambda i: self.get_cached(self.length, i)[1])

    @property
    def cos_cached(self) -> torch.Tensor:
        return self._tables(self.length, self.device)[0]

    @property
    def sin_cached(self) -> torch.Tensor:
        return self._tables(self.length, self.device)[1]

    def get_cached(self, seq_len: int, device_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device("cpu") if device_index is None else torch.device("cuda", device_index)
        return self._tables(seq_len, device)

    def _tables(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (max(seq_len, self.length), self.head_dim)
        return torch.ones(shape, device=device), torch.zeros(shape, device=device)


class _PerDevice:
    """``table[device_index]``: a table per device (None: the CPU), made on demand."""

    def __init__(self, make: Any) -> None:
        self._make = make

    def __getitem__(self, device_index: int | None) -> torch.Tensor:
        return self._make(device_index)


@contextlib.contextmanager
def _bound(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` within the block and what it was before afterwards (absent: deleted)."""
    absent = name not in vars(owner)
    old = vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if absent:
            delattr(owner, name)
        else:
            setattr(owner, name, old)
