"""The implementations compared, each prepared for one cell and called as ``fn(mode)``.

- ``unsloth``  Unsloth's real ``slow_attention_softcapping`` (through ``unsloth_adapter``), fed the
  static 2-D mask Unsloth's own builders make for the no-padding case (``SWA_mask`` for sliding
  layers, ``GA_mask`` for global ones, built at ``max_seq_length`` = the cell's length), exactly as
  ``LlamaModel_fast_forward`` hands it to the kernel. It materialises the full score matrix.
- ``flex``     ``torch.nn.attention.flex_attention`` with a ``t * tanh(x / t)`` ``score_mod`` and a
  causal / sliding-window ``mask_mod`` (block-sparse), ``torch.compile``'d: the best softcapping
  attention PyTorch offers on the same GPU. Same semantics as Unsloth's path.
- ``sdpa``     ``scaled_dot_product_attention(is_causal=True)`` *without* softcap and *without* the
  window: a floor (what fused causal attention costs), not the same function.

``call.finite()`` runs one more forward and says whether every output element is finite.

Every implementation reads the same Q ``(b, h, n, d)``, K/V ``(b, kv_h, n, d)`` tensors of a cell.
``mode`` is ``fwd`` (the forward of a training step: grad enabled, activations saved, then freed)
or ``fwdbwd`` (forward and backward to Q, K and V).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator

import torch

from gemma2_regress import unsloth_adapter

from .grid import IMPLS, Cell

Call = Callable[[str], None]


@dataclasses.dataclass
class Tensors:
    """A cell's inputs: q, k, v (leaf tensors requiring grad) and an upstream gradient buffer."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grad: torch.Tensor  # flat, numel == q.numel(); viewed in each output's layout

    def zero_grads(self) -> None:
        self.q.grad = self.k.grad = self.v.grad = None


def make_tensors(cell: Cell, device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> Tensors:
    """Inputs whose scaled logits have std ~ the softcap (tanh's curved range), as training sees."""
    s = cell.shape
    g = torch.Generator(device=device).manual_seed(seed)
    m = math.sqrt(s.softcap * math.sqrt(s.scalar) / math.sqrt(s.head_dim))

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=device, dtype=dtype) * scale).requires_grad_(True)

    b, n, d = cell.batch, cell.length, s.head_dim
    q = rnd(b, s.n_heads, n, d, scale=m)
    k = rnd(b, s.n_kv_heads, n, d, scale=m)
    v = rnd(b, s.n_kv_heads, n, d)
    grad = torch.randn(q.numel(), generator=g, device=device, dtype=dtype)
    return Tensors(q, k, v, grad)


def _runner(t: Tensors, forward: Callable[[], torch.Tensor]) -> Call:
    def call(mode: str) -> None:
        t.zero_grads()
        with torch.enable_grad():
            out = forward()
            if mode == "fwdbwd":
                out.backward(t.grad.view(out.shape))
        del out

    def finite() -> bool:
        """One more forward, untimed: is every output element finite? (A speed figure for a kernel
        that returns NaN is no figure: Unsloth's note says past 2**31 score elements rows go NaN.)"""
        with torch.enable_grad():
            out = forward()
        return bool(torch.isfinite(out).all())

    call.finite = finite  # type: ignore[attr-defined]
    return call


# --- Unsloth ----------------------------------------------------------------------------------
@functools.cache
def _module_stub(model: str) -> object:
    """One ``self`` per model shape, reused so that compiled graphs' guards keep matching."""
    from .grid import MODELS

    s = MODELS[model]
    return unsloth_adapter.attention_module_stub(s.n_heads, s.n_kv_heads, s.head_dim, s.scalar, s.softcap)


def prepare_unsloth(cell: Cell, t: Tensors) -> Call:
    u = unsloth_adapter.load()
    n, dev, dt = cell.length, t.q.device, t.q.dtype
    swa, ga = u.static_masks(n, cell.shape.window, dt, dev)
    mask = swa if cell.window is not None else ga
    del swa, ga
    mod = _module_stub(cell.model)

    def forward() -> torch.Tensor:
        fn = u.kernel("slow_attention_softcapping")  # looked up per call: a planted patch takes effect
        return fn(t.q, t.k, t.v, mask, mod, cell.batch, n)

    return _runner(t, forward)


def _spin(seconds: float) -> None:
    """Wait ``seconds`` on the host: a spin, since ``time.sleep`` overshoots by ~0.1 ms, a few per cent
    of a 2 ms kernel."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _timed_ms(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """``fn()`` and its time in ms, taken as the benchmark takes it: CUDA events after a synchronize on
    CUDA (the GPU's own time of the call), the wall clock elsewhere."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    return out, start.elapsed_time(end)


class _Stretched(torch.autograd.Function):
    """The real kernel, forward and backward each followed by a wait of (factor - 1) x its own time.

    The kernel runs on detached leaves inside ``forward`` (with grad), and ``backward`` runs its real
    backward through ``torch.autograd.grad``: both passes are the real kernel's, untouched (same
    compiled graphs, same guards), and each is measured where it runs, so the wait is its own."""

    @staticmethod
    def forward(ctx, factor, real, q, k, v, *rest):
        ins = [x.detach().requires_grad_(x.requires_grad) for x in (q, k, v)]
        with torch.enable_grad():
            out, ms = _timed_ms(lambda: real(*ins, *rest), q.device)
        _spin((factor - 1) * ms / 1e3)
        ctx.factor, ctx.ins, ctx.out = factor, ins, out
        return out.detach()

    @staticmethod
    def backward(ctx, grad):
        wanted = [x for x in ctx.ins if x.requires_grad]
        grads, ms = _timed_ms(
            lambda: torch.autograd.grad(ctx.out, wanted, grad, allow_unused=True), grad.device
        )
        _spin((ctx.factor - 1) * ms / 1e3)
        it = iter(grads)
        back = [next(it) if x.requires_grad else None for x in ctx.ins]
        ctx.ins = ctx.out = None  # the kernel's graph is freed with the call, as a clean call's is
        return (None, None, *back) + (None,) * (len(ctx.needs_input_grad) - 5)


def _repeated(real: Callable[..., torch.Tensor], factor: int) -> Callable[..., torch.Tensor]:
    def slow_attention_softcapping(*args, **kwargs):  # same name: crash signatures stay readable
        acc = real(*args, **kwargs)
        for _ in range(factor - 1):
            acc = acc + real(*args, **kwargs)
        return acc / factor

    return slow_attention_softcapping


def _stretched(real: Callable[..., torch.Tensor], factor: float) -> Callable[..., torch.Tensor]:
    def slow_attention_softcapping(q, k, v, *rest):  # same name: crash signatures stay readable
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
            return _Stretched.apply(factor, real, q, k, v, *rest)
        out, ms = _timed_ms(lambda: real(q, k, v, *rest), q.device)
        _spin((factor - 1) * ms / 1e3)
        return out

    return slow_attention_softcapping


@contextlib.contextmanager
def planted_slowdown(factor: float = 2) -> Iterator[None]:
    """Plant a performance mutant in the real Unsloth: ``slow_attention_softcapping`` wrapped so each
    call costs ``factor`` x its own time, its output still the real kernel's.

    - A whole ``factor`` >= 2: the real kernel is evaluated ``factor`` times and their mean returned
      (bit-identical for 2: (a + a) / 2 == a), so forward and backward do ``factor`` x the work and
      hold ``factor`` x the activations.
    - Any other ``factor`` > 1 (1.05, 1.15, 2.5): the real kernel runs once, and its forward and its
      backward are each followed by a host wait of (factor - 1) x the time that pass just took
      (CUDA events on CUDA): a fraction of a kernel cannot be repeated without new shapes (a recompile)
      and would not scale its cost evenly, while a timed wait is exact to microseconds, adds no GPU
      work or memory, and leaves the compiled kernel as it is, so nothing recompiles.
    """
    if not factor > 1:
        raise ValueError(
            f"--plant-slowdown factor must be more than 1 (got {factor}): 1.15 makes each call 15 % "
            "slower; a whole number >= 2 evaluates the kernel that many times"
        )
    u = unsloth_adapter.load()
    real = u.kernels_module.slow_attention_softcapping
    whole = float(factor).is_integer()
    planted = _repeated(real, int(factor)) if whole else _stretched(real, float(factor))
    planted.planted_factor = factor  # type: ignore[attr-defined]
    u.kernels_module.slow_attention_softcapping = planted
    try:
        yield
    finally:
        u.kernels_module.slow_attention_softcapping = real


# --- flex attention ---------------------------------------------------------------------------
@functools.cache
def _tanh_softcap(cap: float) -> Callable:
    def tanh_softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    tanh_softcap.__name__ = f"tanh_softcap_{cap:g}"
    return tanh_softcap


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@functools.cache
def _sliding(window: int) -> Callable:
    """Query i sees key j iff i - W < j <= i (W keys including itself), as ``masks.allowed``."""

    def sliding(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    sliding.__name__ = f"sliding_window_{window}"
    return sliding


@functools.cache
def _flex_fn(compiled: bool) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


@functools.cache
def _block_mask(window: int | None, n: int, device: str) -> object:
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = _causal if window is None else _sliding(window)
    return create_block_mask(mask_mod, None, None, n, n, device=device)


def prepare_flex(cell: Cell, t: Tensors, compiled: bool = True) -> Call:
    s = cell.shape
    bm = _block_mask(cell.window, cell.length, str(t.q.device))
    fn, mod, scale = _flex_fn(compiled), _tanh_softcap(s.softcap), s.scalar**-0.5

    def forward() -> torch.Tensor:
        return fn(t.q, t.k, t.v, score_mod=mod, block_mask=bm, scale=scale, enable_gqa=True)

    return _runner(t, forward)


# --- SDPA floor -------------------------------------------------------------------------------
def _fused_backends() -> list:
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def prepare_sdpa(cell: Cell, t: Tensors) -> Call:
    """Causal fused attention without softcap or window; GQA native if a fused backend takes it,
    else K/V repeated per call (inside the timing). ``sdpa_mode`` on the call says which."""
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    scale = cell.shape.scalar**-0.5
    restrict = t.q.is_cuda

    def attn(k: torch.Tensor, v: torch.Tensor, gqa: bool) -> torch.Tensor:
        ctx = sdpa_kernel(_fused_backends()) if restrict else contextlib.nullcontext()
        with ctx:
            return sdpa(t.q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)

    try:  # probe on a 16-token slice: does a fused backend take GQA here, forward and backward?
        q, k, v = (x[:1, :, :16].detach().requires_grad_(True) for x in (t.q, t.k, t.v))
        ctx = sdpa_kernel(_fused_backends()) if restrict else contextlib.nullcontext()
        with ctx, torch.enable_grad():
            sdpa(q, k, v, is_causal=True, enable_gqa=True).sum().backward()
        mode = "gqa"
    except RuntimeError:
        mode = "repeated-kv"
    if mode == "gqa":
        call = _runner(t, lambda: attn(t.k, t.v, True))
    else:
        groups = cell.shape.n_heads // cell.shape.n_kv_heads
        call = _runner(
            t, lambda: attn(t.k.repeat_interleave(groups, 1), t.v.repeat_interleave(groups, 1), False)
        )
    call.sdpa_mode = mode  # type: ignore[attr-defined]
    return call


def prepare(name: str, cell: Cell, t: Tensors, compile_flex: bool = True) -> Call:
    """The named implementation, ready for ``cell``; an unknown name lists the known ones."""
    if name == "unsloth":
        return prepare_unsloth(cell, t)
    if name == "flex":
        return prepare_flex(cell, t, compiled=compile_flex)
    if name == "sdpa":
        return prepare_sdpa(cell, t)
    raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(IMPLS)}")
