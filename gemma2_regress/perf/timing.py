"""Timing, peak memory, out-of-memory handling and the ceilings every figure is read against.

On CUDA a call is timed with CUDA events around it (after a synchronize) and its peak memory is
``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus what was
allocated before the call (the inputs and masks): the extra memory the call itself needed.
Without CUDA, wall-clock ``time.perf_counter`` is used and memory is not measured (``None``).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable

import torch

from gemma2_regress.reference import verdicts


@dataclasses.dataclass
class Outcome:
    """``status`` is ``ok``, ``oom`` or ``error:<signature>: <message>``; ms/peak set when ok."""

    status: str
    ms: float | None = None
    peak_bytes: int | None = None


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error, also when compiled code or a compiler wraps it in another exception."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return "out of memory" in str(exc).lower()


def release_memory() -> None:
    """Collect reference cycles and, on CUDA, give the allocator's cached blocks back, so that the next
    implementation (after a failed call) or the next cell (``bench.Runner.measure``, on CUDA) starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def guarded(fn: Callable[[], Outcome]) -> Outcome:
    """Run ``fn``; an OOM becomes ``Outcome("oom")`` and any other exception an ``error:`` outcome.
    Memory is released *after* the exception (and its frames) are dropped."""
    status = None
    try:
        return fn()
    except Exception as exc:  # every failure is a recorded result, never a crash of the run
        if is_oom(exc):
            status = "oom"
        else:
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            status = f"error:{verdicts.crash_signature(exc).removeprefix('crash:')}: {msg}"
        del exc
    release_memory()
    return Outcome(status)


def timed(call: Callable[[], None], cuda: bool) -> Outcome:
    """Time one call and measure its peak memory (see the module docstring)."""
    if not cuda:
        t0 = time.perf_counter()
        call()
        return Outcome("ok", (time.perf_counter() - t0) * 1e3, None)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    end.synchronize()
    return Outcome("ok", start.elapsed_time(end), torch.cuda.max_memory_allocated() - base)


def summarize(ms: list[float]) -> dict[str, float]:
    """Median, min and the spread (max/min) of repeated timings."""
    return {
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "spread": max(ms) / min(ms) if min(ms) > 0 else float("inf"),
    }


# --- ceilings -----------------------------------------------------------------------------------
def matmul_ceiling(device: str, n: int | None = None, repeats: int = 10) -> dict[str, object]:
    """Measured dense-matmul rate: bf16 8192^3 on CUDA (fp32 512^3 on CPU), 3 warm-ups, median of ``repeats``."""
    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 512)
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    ms = [timed(lambda: a @ b, cuda).ms for _ in range(repeats)]
    med = statistics.median(ms)
    return {
        "what": f"{n}^3 {str(dtype).removeprefix('torch.')} matmul",
        "median_ms": med,
        "tflops": 2 * n**3 / (med * 1e-3) / 1e12,
    }


def copy_ceiling(device: str, mib: int | None = None, repeats: int = 10) -> dict[str, object]:
    """Measured device copy bandwidth (bytes read + written) of a 1 GiB buffer (16 MiB on CPU)."""
    cuda = device.startswith("cuda")
    mib = mib or (1024 if cuda else 16)
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = [timed(lambda: dst.copy_(src), cuda).ms for _ in range(repeats)]
    med = statistics.median(ms)
    return {"what": f"{mib} MiB copy", "median_ms": med, "gbps": 2 * mib * 2**20 / (med * 1e-3) / 1e9}
