"""Unsloth's flash-attn path, given on any device: what a flash-attn >= 2.6.3 on a capability-8 GPU gives
Unsloth's modules at import, for a block, and a record of what Unsloth hands flash-attn.

Unsloth decides its flash path once, at import (``unsloth/models/_utils.py``) and copies the flags into
every module by star imports. ``flash_path(u, device)`` gives those modules, for a block, the import-time
values (the flags, the imported flash-attn functions), bound to the importable ``flash_attn`` (the
suite's reference stand-in where no real one is installed); ``flash_path_unavailable`` says why it
cannot here; ``recording_flash_calls(u)`` records each call Unsloth makes to flash-attn as flash-attn
received it (``FlashCall``); ``attention_backend`` asks Unsloth's dispatcher which route it takes.

Works on the ``unsloth_adapter.Unsloth`` handle passed in (``unsloth_adapter.load()``) and never imports
``unsloth`` itself (``unsloth_adapter`` is the one door). See docs/flash.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from packaging.version import Version

from gemma2_regress import standins
from gemma2_regress.unsloth_adapter import STATIC_MASKS, Unsloth, UnslothUnavailable

FLASH_FLAGS = ("HAS_FLASH_ATTENTION", "HAS_FLASH_ATTENTION_SOFTCAPPING")
FLASH_FUNCTIONS = ("flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache")
SOFTCAP_FLOOR = "2.6.3"  # unsloth/models/_utils.py: HAS_FLASH_ATTENTION_SOFTCAPPING = version >= 2.6.3
_ABSENT = object()


def flash_flag_holders(u: Unsloth) -> list[types.ModuleType]:
    """Every loaded ``unsloth`` module holding a copy of ``HAS_FLASH_ATTENTION`` or
    ``HAS_FLASH_ATTENTION_SOFTCAPPING`` (each ``from ._utils import *`` / ``from .llama import *`` makes one)."""
    return [
        m
        for _, m in u.loaded_modules()
        if isinstance(getattr(m, "__dict__", None), dict) and any(f in vars(m) for f in FLASH_FLAGS)
    ]


def flash_path_taken_at_import(u: Unsloth) -> bool:
    """Whether Unsloth turned its flash path on when it was imported (a real flash-attn >= 2.6.3 on
    a capability-8 GPU: ``unsloth/models/_utils.py``)."""
    return bool(getattr(u.utils_module(), "HAS_FLASH_ATTENTION_SOFTCAPPING", False))


def flash_path_unavailable(u: Unsloth, device: str | torch.device) -> str | None:
    """Why ``flash_path(u, device)`` cannot give Unsloth's flash path here (None if it can)."""
    kind = _device_kind(device)
    if flash_path_taken_at_import(u):
        return None
    which = standins.flash_attn_in_use()
    if which == "none":
        return (
            "flash_attn is not importable here: call gemma2_regress.standins.use_flash_attn_standin() "
            "first (the suite's conftest does) or install flash-attn>=2.6.3"
        )
    if which != standins.STANDIN:
        return (
            f"{which} is installed, but Unsloth {u.version} left its flash path off when it was "
            "imported (a flash-attn older than 2.6.3, a broken install, or no capability-8 GPU); only the "
            "reference stand-in is bound at run time"
        )
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return (
                f"the CUDA device has capability {major}.{minor}; Unsloth takes flash-attn only on "
                "capability >= 8 (unsloth/models/_utils.py: `if major_version >= 8`)"
            )
    elif kind != "cpu":
        return f"device type {kind!r}: the flash path is given on 'cpu' (the stand-in) and 'cuda' only"
    return None


@contextlib.contextmanager
def flash_path(u: Unsloth, device: str | torch.device, models: tuple[Any, ...] = ()) -> Iterator[str]:
    """Within the block Unsloth's modules hold what flash-attn >= 2.6.3 on a capability-8 GPU gives
    them at import, bound to the importable ``flash_attn``; the previous values come back on exit.
    Yields ``standins.flash_attn_in_use()``. ``device``: where the model runs ("cpu" or "cuda").

    Where a real flash-attn already made Unsloth take the path at import, nothing is touched: the
    flags are only checked to be on in every copy. Otherwise (the reference stand-in, see
    ``flash_path_unavailable`` for what is refused), these module globals are set, each as the
    import-time code of Unsloth 2026.10.9 sets it:

    - ``HAS_FLASH_ATTENTION = True`` and ``HAS_FLASH_ATTENTION_SOFTCAPPING = (version >= 2.6.3)`` in
      every loaded ``unsloth`` module that holds a copy (``flash_flag_holders``): computed once in
      ``unsloth/models/_utils.py`` (the ``major_version >= 8`` branch) and copied by every star import.
      The ones read on Gemma-2's path: ``unsloth.models.gemma2`` (``Gemma2Attention_fast_forward``:
      ``use_flash = HAS_FLASH_ATTENTION_SOFTCAPPING and attention_mask is None``),
      ``unsloth.models.llama`` (``LlamaModel_fast_forward`` drops an all-ones 2-D mask and sets the
      sliding layers' ``SWA_mask = True`` / ``GA_mask = False`` under it),
      ``unsloth.utils.attention_dispatch`` (``select_attention_backend``: FLASH_DENSE / FLASH_VARLEN),
      ``unsloth.models._utils`` (``resolve_attention_implementation`` at load time),
      ``unsloth.models.loader`` (load-time messages).
    - ``unsloth.utils.attention_dispatch.flash_attn_func`` / ``flash_attn_varlen_func`` (None unless
      ``HAS_FLASH_ATTENTION``: the dispatcher calls these names for the dense and packed routes), and
      its ``_DEVICE_BACKENDS``, recomputed by Unsloth's own ``_per_device_backends`` under the flag
      (a table only on hosts whose GPUs differ in generation; None elsewhere).
    - ``unsloth.models.gemma2.flash_attn_func`` (imported there under the flag; not called by this
      release's Gemma-2 code, which goes through the dispatcher).
    - ``unsloth.models.gemma2._FLASH_DECODE``: Unsloth's expression ``SOFTCAPPING and DEVICE_TYPE ==
      "cuda" and UNSLOTH_GEMMA2_FLASH_DECODE != "0"``, and here also ``device`` of type "cuda" (under
      ``UNSLOTH_ALLOW_CPU`` Unsloth's DEVICE_TYPE reads "cuda" on a CPU too); and, where it is True,
      ``gemma2.flash_attn_with_kvcache`` (the one-token decode ``_gemma2_flash_decode`` calls it).
      ``_FLASH_DECODE_PROBED`` (its per-device probe results) is restored on exit.

    Not set, on purpose: ``SUPPORTS_BFLOAT16`` (the GPU's, not flash-attn's: the dispatcher casts
    float32 q/k/v to bfloat16 where it is True, to float16 where False, as on a CPU); transformers'
    ``is_flash_attn_2_available`` (needs package metadata the stand-in does not ship; Gemma-2's fast
    path does not ask it, but a model *loaded* inside the block asks transformers for
    ``flash_attention_2``, so load models before entering); the flash-attn names in Unsloth modules of
    other models (``unsloth_zoo``'s Gemma-4 patches). ``models``: loaded Unsloth models whose
    ``SWA_mask`` / ``GA_mask`` attributes (set per forward under the flag, reused by later forwards)
    are put back on exit. ``flash_attn`` modules this block imported from the stand-in are dropped
    from ``sys.modules`` on exit.
    """
    reason = flash_path_unavailable(u, device)
    if reason is not None:
        raise UnslothUnavailable(f"Unsloth's flash-attn path cannot be given here: {reason}")
    kind = _device_kind(device)
    holders = flash_flag_holders(u)
    if flash_path_taken_at_import(u):
        off = [f"{m.__name__}.{f}" for m in holders for f in FLASH_FLAGS if f in vars(m) and not vars(m)[f]]
        if off:
            raise RuntimeError(f"Unsloth took the flash path at import, but these copies are off: {off}")
        yield standins.flash_attn_in_use()
        return

    before = set(standins.standin_modules())
    fa = importlib.import_module("flash_attn")
    importlib.import_module("flash_attn.flash_attn_interface")  # what Unsloth's install check imports
    softcapping = Version(fa.__version__) >= Version(SOFTCAP_FLOOR)
    values: list[tuple[types.ModuleType, str, Any]] = []
    for m in holders:
        if "HAS_FLASH_ATTENTION" in vars(m):
            values.append((m, "HAS_FLASH_ATTENTION", True))
        if "HAS_FLASH_ATTENTION_SOFTCAPPING" in vars(m):
            values.append((m, "HAS_FLASH_ATTENTION_SOFTCAPPING", softcapping))
    dispatch = u.dispatch_module()
    if dispatch is not None:
        values += [
            (dispatch, "flash_attn_func", fa.flash_attn_func),
            (dispatch, "flash_attn_varlen_func", fa.flash_attn_varlen_func),
        ]
    g = u.gemma2_module
    if softcapping:
        values.append((g, "flash_attn_func", fa.flash_attn_func))
    if "_FLASH_DECODE" in vars(g):
        decode = (
            softcapping
            and getattr(g, "DEVICE_TYPE", None) == "cuda"
            and kind == "cuda"
            and os.environ.get("UNSLOTH_GEMMA2_FLASH_DECODE", "1") != "0"
        )
        values.append((g, "_FLASH_DECODE", decode))
        if decode:
            values.append((g, "flash_attn_with_kvcache", fa.flash_attn_with_kvcache))
    probed = vars(g).get("_FLASH_DECODE_PROBED")
    probed_before = dict(probed) if isinstance(probed, dict) else None
    masks_before = [
        (m, name, vars(m).get(name, _ABSENT))
        for model in models
        for m in model.modules()
        for name in STATIC_MASKS
    ]
    saved: list[tuple[types.ModuleType, str, Any]] = []
    try:
        for m, name, value in values:
            saved.append((m, name, vars(m).get(name, _ABSENT)))
            setattr(m, name, value)
        if dispatch is not None and hasattr(dispatch, "_per_device_backends"):
            saved.append((dispatch, "_DEVICE_BACKENDS", vars(dispatch).get("_DEVICE_BACKENDS", _ABSENT)))
            dispatch._DEVICE_BACKENDS = dispatch._per_device_backends(dispatch._visible_capabilities())
        yield standins.flash_attn_in_use()
    finally:
        for m, name, old in reversed(saved):
            _put(m, name, old)
        for m, name, old in masks_before:
            _put(m, name, old)
        if probed_before is not None:
            probed.clear()
            probed.update(probed_before)
        for name in set(standins.standin_modules()) - before:
            del sys.modules[name]


@contextlib.contextmanager
def recording_flash_calls(u: Unsloth) -> Iterator[list[FlashCall]]:
    """Within the block every call Unsloth makes to flash-attn through the names its modules bound
    (by ``flash_path`` or at import) is recorded, in order, as flash-attn received it, and passed on
    unchanged. Enter it inside ``flash_path``; the names are put back on exit."""
    calls: list[FlashCall] = []
    slots = [
        (m, n, vars(m)[n])
        for m in (u.dispatch_module(), u.gemma2_module)
        if m is not None
        for n in FLASH_FUNCTIONS
        if vars(m).get(n) is not None
    ]
    for m, n, fn in slots:
        setattr(m, n, _recording(fn, n, calls))
    try:
        yield calls
    finally:
        for m, n, fn in slots:
            setattr(m, n, fn)


def attention_backend(u: Unsloth, use_varlen: bool) -> str:
    """Unsloth's ``select_attention_backend(use_varlen)``: "flash_dense", "flash_varlen", "xformers", "sdpa"."""
    dispatch = u.dispatch_module()
    if dispatch is None:
        raise UnslothUnavailable(f"unsloth {u.version} has no unsloth.utils.attention_dispatch")
    return dispatch.select_attention_backend(use_varlen)


@dataclasses.dataclass(frozen=True)
class FlashCall:
    """One call Unsloth made to flash-attn, as flash-attn received it (its defaults filled in)."""

    function: str  # flash_attn_func, flash_attn_varlen_func or flash_attn_with_kvcache
    dtype: torch.dtype  # q's
    q_shape: tuple[int, ...]
    causal: bool
    window_size: tuple[int, int]
    softcap: float
    softmax_scale: float | None
    cu_seqlens: tuple[int, ...] | None  # varlen: cu_seqlens_q
    cu_seqlens_dtype: torch.dtype | None
    cache_leftpad: tuple[int, ...] | None = None  # kvcache: each row's left padding in the cache


def _recording(fn: Callable[..., Any], name: str, calls: list[FlashCall]) -> Callable[..., Any]:
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def record(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        cu = a.get("cu_seqlens_q")
        leftpad = a.get("cache_leftpad")
        calls.append(
            FlashCall(
                function=name,
                dtype=a["q"].dtype,
                q_shape=tuple(a["q"].shape),
                causal=bool(a.get("causal", False)),
                window_size=tuple(a.get("window_size", (-1, -1))),
                softcap=float(a.get("softcap", 0.0)),
                softmax_scale=a.get("softmax_scale"),
                cu_seqlens=None if cu is None else tuple(int(x) for x in cu.tolist()),
                cu_seqlens_dtype=None if cu is None else cu.dtype,
                cache_leftpad=None if leftpad is None else tuple(int(x) for x in leftpad.tolist()),
            )
        )
        return fn(*args, **kwargs)

    return record


def _put(owner: Any, name: str, value: Any) -> None:
    """Set ``owner.name`` to ``value``, or delete it where ``value`` is ``_ABSENT``."""
    if value is _ABSENT:
        if name in vars(owner):
            delattr(owner, name)
    else:
        setattr(owner, name, value)


def _device_kind(device: str | torch.device) -> str:
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"{device!r} is not a torch device; pass 'cpu' or 'cuda'") from None
