"""A pure-PyTorch reference stand-in for flash-attn 2.6.3 (not flash-attn; no CUDA kernels).

It exists to check how a caller (Unsloth's Gemma-2 path) *uses* flash-attn where the real package
cannot be installed: the arguments it passes, the layouts, the window and cache conventions, the
return values. It rejects what flash-attn 2.6.3 rejects, with the same exception and text (float32
inputs, mixed dtypes, a head dimension over 256, int64 ``cu_seqlens``, ...), except that it runs on
the CPU too; and it computes what flash-attn's docstrings say the kernels compute, plainly in
float32, saying nothing about flash-attn's CUDA kernels or the numerics of their tiling. The checks,
the semantics, and where each was read, are in ``flash_attn_interface``.

Importable as ``flash_attn`` only after ``gemma2_regress.standins.use_flash_attn_standin()``.
"""

from .flash_attn_interface import (
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
)

__version__ = "2.6.3"

__all__ = ["__version__", "flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"]
