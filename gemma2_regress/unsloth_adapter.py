"""The one door to Unsloth's Gemma-2 attention code, discovering what the installed release accepts.

Unsloth's internals move between releases (the kernel's last argument was ``q_len`` and became
``kv_len``; mask builders were renamed). Rather than a table of versions, this module reads the
installed release: it imports Unsloth (with ``UNSLOTH_ALLOW_CPU=1`` where there is no GPU), finds
the kernels by name, reads from the source of ``Gemma2Attention_fast_forward`` which length the
model hands the kernel, and builds masks with the same helpers ``LlamaModel_fast_forward`` uses.
Every attribute is looked up at call time, so a run-time patch (a planted mutant) takes effect.

The whole model goes through here too: ``from_pretrained`` (``FastLanguageModel``), ``for_inference``
and its undoing, and the sentinel Unsloth's pre-patch record uses for an attribute it added. Nothing
else in the package imports ``unsloth`` in this process (``gpu_check`` tries the import in a child).

And Unsloth's flash-attn path: ``Unsloth.flash_path(device)`` gives Unsloth's modules, for a block, the
import-time values a flash-attn >= 2.6.3 on a capability-8 GPU gives them (the flags, the imported
flash-attn functions), bound to the importable ``flash_attn`` (the suite's reference stand-in where no
real one is installed); ``recording_flash_calls`` records what Unsloth hands flash-attn; and
``gemma2_attention`` runs one Gemma-2 layer's attention (``Gemma2Attention_fast_forward``) on given
q/k/v, on a CPU too.
``load`` imports Unsloth with the stand-in hidden, so that outside ``flash_path`` Unsloth behaves as
this machine's own flash-attn (or its absence) makes it behave (docs/flash.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from packaging.version import Version

from gemma2_regress import standins


class UnslothUnavailable(RuntimeError):
    """Unsloth is not installed or does not import here; the message says why and what to do."""


@dataclasses.dataclass
class Unsloth:
    """Handles on the installed Unsloth release's Gemma-2 attention pieces."""

    version: str
    kernels_module: types.ModuleType
    llama_module: types.ModuleType
    gemma2_module: types.ModuleType
    length_arg: str  # "kv_len" or "q_len": what the model passes as the kernel's last argument
    _compiles: dict[str, bool] = dataclasses.field(default_factory=dict)

    def kernel(self, name: str) -> Callable[..., torch.Tensor]:
        """``slow_attention_softcapping`` or ``slow_inference_attention_softcapping``, looked up now."""
        return getattr(self.kernels_module, name)

    # --- the compiled kernel's eager fallback ------------------------------------------------------
    # Releases with ``_SOFTCAP_EAGER`` run ``slow_attention_softcapping`` through torch.compile and, the
    # first time inductor fails on a device type, warn once and run the same function eagerly from then on.
    def has_eager_fallback(self) -> bool:
        """Whether this release falls back to eager when ``slow_attention_softcapping`` fails to compile."""
        return isinstance(getattr(self.kernels_module, "_SOFTCAP_EAGER", None), dict)

    def softcapping_compiles(self, device: str | torch.device) -> bool:
        """Whether ``slow_attention_softcapping`` runs compiled on ``device`` in this process: one tiny
        float32 call settles Unsloth's choice (cached), then its fallback flag is read. A release without
        the fallback is taken as compiled (there, a failed compile raises in the test itself)."""
        kind = torch.device(device).type
        if kind not in self._compiles:
            if self.has_eager_fallback():
                q = torch.zeros(2, 2, 2, 16, device=device)
                mask = torch.zeros(2, 2, device=device)
                stub = attention_module_stub(2, 2, 16, 16.0, 50.0)
                self.kernel("slow_attention_softcapping")(q, q, q, mask, stub, 2, 2)
            self._compiles[kind] = not self.kernels_module.__dict__.get("_SOFTCAP_EAGER", {}).get(kind, False)
        return self._compiles[kind]

    @contextlib.contextmanager
    def eager_fallback(self, device: str | torch.device) -> Iterator[None]:
        """Inside, ``slow_attention_softcapping`` on ``device`` takes Unsloth's eager fallback, as it does
        after a failed compile; the flag is restored on exit. Requires ``has_eager_fallback()``."""
        flags = self.kernels_module._SOFTCAP_EAGER
        kind = torch.device(device).type
        before = flags.get(kind)
        flags[kind] = True
        try:
            yield
        finally:
            if before is None:
                flags.pop(kind, None)
            else:
                flags[kind] = before

    # --- the flash-attn path -----------------------------------------------------------------------
    def _utils_module(self) -> types.ModuleType:
        return importlib.import_module("unsloth.models._utils")

    def _dispatch_module(self) -> types.ModuleType | None:
        try:
            return importlib.import_module("unsloth.utils.attention_dispatch")
        except ImportError:  # releases before the dispatcher imported flash-attn in the model files only
            return None

    def flash_flag_holders(self) -> list[types.ModuleType]:
        """Every loaded ``unsloth`` module holding a copy of ``HAS_FLASH_ATTENTION`` or
        ``HAS_FLASH_ATTENTION_SOFTCAPPING`` (each ``from ._utils import *`` / ``from .llama import *`` makes one)."""
        return [
            m
            for n, m in sorted(sys.modules.items())
            if (n == "unsloth" or n.startswith("unsloth."))
            and isinstance(getattr(m, "__dict__", None), dict)
            and any(f in vars(m) for f in FLASH_FLAGS)
        ]

    def flash_path_taken_at_import(self) -> bool:
        """Whether Unsloth turned its flash path on when it was imported (a real flash-attn >= 2.6.3 on
        a capability-8 GPU: ``unsloth/models/_utils.py``)."""
        return bool(getattr(self._utils_module(), "HAS_FLASH_ATTENTION_SOFTCAPPING", False))

    @staticmethod
    def flash_attn_in_use() -> str:
        """``"flash-attn X.Y.Z (real)"``, ``"reference stand-in 2.6.3"`` or ``"none"``: what ``import
        flash_attn`` gives in this process (the run header prints it)."""
        return flash_attn_in_use()

    def flash_path_unavailable(self, device: str | torch.device) -> str | None:
        """Why ``flash_path(device)`` cannot give Unsloth's flash path here (None if it can)."""
        kind = _device_kind(device)
        if self.flash_path_taken_at_import():
            return None
        which = flash_attn_in_use()
        if which == "none":
            return (
                "flash_attn is not importable here: call gemma2_regress.standins.use_flash_attn_standin() "
                "first (the suite's conftest does) or install flash-attn>=2.6.3"
            )
        if which != standins.STANDIN:
            return (
                f"{which} is installed, but Unsloth {self.version} left its flash path off when it was "
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
    def flash_path(self, device: str | torch.device, models: tuple[Any, ...] = ()) -> Iterator[str]:
        """Within the block Unsloth's modules hold what flash-attn >= 2.6.3 on a capability-8 GPU gives
        them at import, bound to the importable ``flash_attn``; the previous values come back on exit.
        Yields ``flash_attn_in_use()``. ``device``: where the model runs ("cpu" or "cuda").

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
        reason = self.flash_path_unavailable(device)
        if reason is not None:
            raise UnslothUnavailable(f"Unsloth's flash-attn path cannot be given here: {reason}")
        kind = _device_kind(device)
        holders = self.flash_flag_holders()
        if self.flash_path_taken_at_import():
            off = [
                f"{m.__name__}.{f}" for m in holders for f in FLASH_FLAGS if f in vars(m) and not vars(m)[f]
            ]
            if off:
                raise RuntimeError(f"Unsloth took the flash path at import, but these copies are off: {off}")
            yield flash_attn_in_use()
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
        dispatch = self._dispatch_module()
        if dispatch is not None:
            values += [
                (dispatch, "flash_attn_func", fa.flash_attn_func),
                (dispatch, "flash_attn_varlen_func", fa.flash_attn_varlen_func),
            ]
        g = self.gemma2_module
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
            for name in _MODEL_MASKS
        ]
        saved: list[tuple[types.ModuleType, str, Any]] = []
        try:
            for m, name, value in values:
                saved.append((m, name, vars(m).get(name, _ABSENT)))
                setattr(m, name, value)
            if dispatch is not None and hasattr(dispatch, "_per_device_backends"):
                saved.append((dispatch, "_DEVICE_BACKENDS", vars(dispatch).get("_DEVICE_BACKENDS", _ABSENT)))
                dispatch._DEVICE_BACKENDS = dispatch._per_device_backends(dispatch._visible_capabilities())
            yield flash_attn_in_use()
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
    def recording_flash_calls(self) -> Iterator[list[FlashCall]]:
        """Within the block every call Unsloth makes to flash-attn through the names its modules bound
        (by ``flash_path`` or at import) is recorded, in order, as flash-attn received it, and passed on
        unchanged. Enter it inside ``flash_path``; the names are put back on exit."""
        calls: list[FlashCall] = []
        slots = [
            (m, n, vars(m)[n])
            for m in (self._dispatch_module(), self.gemma2_module)
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

    def attention_backend(self, use_varlen: bool) -> str:
        """Unsloth's ``select_attention_backend(use_varlen)``: "flash_dense", "flash_varlen", "xformers", "sdpa"."""
        dispatch = self._dispatch_module()
        if dispatch is None:
            raise UnslothUnavailable(f"unsloth {self.version} has no unsloth.utils.attention_dispatch")
        return dispatch.select_attention_backend(use_varlen)

    def gemma2_attention(
        self,
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
        ``True`` on sliding layers and ``False`` on global ones; else Unsloth's 4-D masks, ``eval_masks``);
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
        g = self.gemma2_module
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
            training=False,
            rotary_emb=_IdentityRope(head_dim),
            apply_qkv=lambda _self, _x: (flat(q), flat(k), flat(v)),
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

    # --- masks, built the way LlamaModel_fast_forward builds them -------------------------------
    def _converters(self) -> tuple[Any, Any]:
        base = self.llama_module.AttentionMaskConverter
        sliding = getattr(self.llama_module, "Gemma2AttentionMaskConverter", None)
        return base, sliding

    def static_masks(
        self, n: int, window: int, dtype: torch.dtype, device: str | torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The static ``(n, n)`` sliding and global masks (``self.SWA_mask`` / ``self.GA_mask``)."""
        base, sliding = self._converters()
        if sliding is not None:
            swa_conv = sliding(is_causal=True, sliding_window=window)
        else:  # releases before the Gemma-2 converter passed the window to the legacy one
            swa_conv = base(is_causal=True, sliding_window=window)
        swa = swa_conv.to_causal_4d(1, n, n, dtype=dtype, device=device).squeeze(0).squeeze(0)
        ga = base(is_causal=True).to_causal_4d(1, n, n, dtype=dtype, device=device)
        return swa, ga.squeeze(0).squeeze(0)

    def eval_masks(
        self,
        attention_mask: torch.Tensor,
        q_len: int,
        window: int,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-call 4-D sliding and global masks built from a 2-D ``attention_mask`` (evaluation).

        ``attention_mask`` is ``(bsz, kv_len)``; the queries are its last ``q_len`` positions.
        """
        base, sliding = self._converters()
        kv_len = attention_mask.shape[-1]
        if sliding is not None:
            swa = sliding(is_causal=True, sliding_window=window).to_4d(attention_mask, q_len, dtype, kv_len)
            ga = base(is_causal=True).to_4d(attention_mask, q_len, dtype, kv_len)
            return swa, ga
        prep = self.llama_module._prepare_4d_causal_attention_mask_for_sdpa
        embeds = torch.empty(attention_mask.shape[0], q_len, 1, dtype=dtype, device=attention_mask.device)
        past = kv_len - q_len
        swa = prep(attention_mask, (attention_mask.shape[0], q_len), embeds, past, sliding_window=window)
        ga = prep(attention_mask, (attention_mask.shape[0], q_len), embeds, past)
        return swa, ga


FLASH_FLAGS = ("HAS_FLASH_ATTENTION", "HAS_FLASH_ATTENTION_SOFTCAPPING")
FLASH_FUNCTIONS = ("flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache")
SOFTCAP_FLOOR = "2.6.3"  # unsloth/models/_utils.py: HAS_FLASH_ATTENTION_SOFTCAPPING = version >= 2.6.3
_MODEL_MASKS = ("SWA_mask", "GA_mask")  # LlamaModel_fast_forward's per-model static masks (or sentinels)
_ABSENT = object()


def flash_attn_in_use() -> str:
    """Which flash-attn ``import flash_attn`` gives in this process, without importing it or Unsloth:
    ``"flash-attn X.Y.Z (real)"``, ``"reference stand-in 2.6.3"`` or ``"none"``."""
    return standins.flash_attn_in_use()


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


def _recording(fn: Callable[..., Any], name: str, calls: list[FlashCall]) -> Callable[..., Any]:
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def record(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        cu = a.get("cu_seqlens_q")
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


class _IdentityRope:
    """A rotary cache whose tables (cos 1, sin 0) make RoPE the identity: ``get_cached`` as Unsloth's."""

    def __init__(self, head_dim: int) -> None:
        self.head_dim = head_dim

    def get_cached(self, seq_len: int, device_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        device = "cpu" if device_index is None else torch.device("cuda", device_index)
        shape = (seq_len, self.head_dim)
        return torch.ones(shape, device=device), torch.zeros(shape, device=device)


@contextlib.contextmanager
def _bound(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` within the block and what it was before afterwards."""
    old = vars(owner).get(name, _ABSENT)
    setattr(owner, name, value)
    try:
        yield
    finally:
        _put(owner, name, old)


def _device_kind(device: str | torch.device) -> str:
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"{device!r} is not a torch device; pass 'cpu' or 'cuda'") from None


def attention_module_stub(
    n_heads: int, n_kv_heads: int, head_dim: int, scalar: float, softcap: float
) -> types.SimpleNamespace:
    """The ``self`` the kernels read: ``.config`` (heads, kv heads, scalar, cap), ``.head_dim``,
    ``.num_key_value_groups``. Plain attributes, as a Gemma2Attention module carries them."""
    config = types.SimpleNamespace(
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        query_pre_attn_scalar=scalar,
        attn_logit_softcapping=softcap,
    )
    return types.SimpleNamespace(config=config, head_dim=head_dim, num_key_value_groups=n_heads // n_kv_heads)


def _length_arg(gemma2_module: types.ModuleType) -> str:
    """Which length ``Gemma2Attention_fast_forward`` passes the slow kernel as its last argument."""
    src = inspect.getsource(gemma2_module.Gemma2Attention_fast_forward)
    m = re.search(r"\(\s*Q\s*,\s*K\s*,\s*V\s*,\s*causal_mask\s*,\s*self\s*,\s*bsz\s*,\s*(\w+)\s*\)", src)
    if not m:
        raise UnslothUnavailable(
            "could not find the slow-kernel call in Gemma2Attention_fast_forward of this Unsloth; "
            "update gemma2_regress/unsloth_adapter.py for the new call shape"
        )
    return "kv_len" if "kv" in m.group(1) else "q_len"


def installed_version() -> str | None:
    """The installed Unsloth version, without importing it (None if not installed)."""
    try:
        return importlib.metadata.version("unsloth")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def load() -> Unsloth:
    """Import the installed Unsloth once and return handles on its Gemma-2 attention code."""
    version = installed_version()
    if version is None:
        raise UnslothUnavailable(
            "unsloth is not installed in this environment; run `nox -s cpu` (it installs it) or "
            "`pip install unsloth==<version>`"
        )
    if not torch.cuda.is_available():
        os.environ.setdefault("UNSLOTH_ALLOW_CPU", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    chosen_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        # Unsloth decides its flash path once, at import: it must see this machine's own flash-attn (or
        # none), never the suite's stand-in, which only ``Unsloth.flash_path`` binds, for a block.
        with standins.flash_attn_standin_hidden():
            importlib.import_module("unsloth")
            kernels = importlib.import_module("unsloth.kernels.flex_attention")
            llama = importlib.import_module("unsloth.models.llama")
            gemma2 = importlib.import_module("unsloth.models.gemma2")
    except Exception as exc:
        raise UnslothUnavailable(
            f"unsloth {version} does not import here: {type(exc).__name__}: {exc}"
        ) from exc
    if chosen_cache and os.environ.get("TORCHINDUCTOR_CACHE_DIR") != chosen_cache:
        # unsloth_zoo's patch_torch_compile pops TORCHINDUCTOR_CACHE_DIR, which sends every compile to
        # torch's default /tmp folder; a runner that keeps its cache elsewhere (docs/gpu.md) needs it back.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen_cache
    return Unsloth(version, kernels, llama, gemma2, _length_arg(gemma2))


# --- the whole model: FastLanguageModel ------------------------------------------------------------


def from_pretrained(
    path: str | os.PathLike[str], *, max_seq_length: int, dtype: torch.dtype
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from ``FastLanguageModel.from_pretrained(path, max_seq_length=...,
    dtype=..., load_in_4bit=False)``; call ``load()`` first (it imports Unsloth, or says why not)."""
    from unsloth import FastLanguageModel

    return FastLanguageModel.from_pretrained(
        str(path), max_seq_length=max_seq_length, dtype=dtype, load_in_4bit=False
    )


def for_inference(model: torch.nn.Module) -> None:
    """``FastLanguageModel.for_inference(model)``: every later forward takes Unsloth's inference kernels
    until ``undo_for_inference``."""
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)


def undo_for_inference(model: torch.nn.Module) -> None:
    """Drop the ``_flag_for_generation`` marks ``for_inference`` leaves (they reroute every forward
    through Unsloth's inference kernels), without ``FastLanguageModel.for_training``'s side effects."""
    for m in model.modules():
        if "_flag_for_generation" in vars(m):
            del m._flag_for_generation


def pre_patch_sentinels() -> tuple[object, ...]:
    """The value(s) Unsloth's record of pre-patched transformers attributes uses for "was absent"
    (``unsloth.models.llama._MISSING``); empty if Unsloth is not imported (never imports it)."""
    mod = sys.modules.get("unsloth.models.llama")
    return (mod._MISSING,) if mod is not None and hasattr(mod, "_MISSING") else ()
