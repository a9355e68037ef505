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

Unsloth's flash-attn path (``unsloth_flash``) and one Gemma-2 layer run through Unsloth
(``unsloth_layer``) work on the ``Unsloth`` handle ``load`` returns and never import ``unsloth``.
``load`` imports Unsloth with the suite's flash-attn stand-in hidden, so that outside
``unsloth_flash.flash_path`` Unsloth behaves as this machine's own flash-attn (or its absence) makes
it behave (docs/flash.md).
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

from gemma2_regress import standins


class UnslothUnavailable(RuntimeError):
    """Unsloth is not installed or does not import here; the message says why and what to do."""


# The arguments besides ``options`` of Unsloth's decorator on ``_compiled_slow_attention_softcapping``, which
# the compile probe (``Unsloth._compiles_apart``) repeats on its copy. A release that changed them would be
# probed under other settings than its kernel runs with: tests/selftest/test_compile_probe.py reads the
# installed release's source and fails where they differ.
KERNEL_COMPILE_ARGS: dict[str, bool] = {"fullgraph": True, "dynamic": True}


@dataclasses.dataclass
class Unsloth:
    """Handles on the installed Unsloth release's Gemma-2 attention pieces."""

    version: str
    kernels_module: types.ModuleType
    llama_module: types.ModuleType
    gemma2_module: types.ModuleType
    length_arg: str  # "kv_len" or "q_len": what the model passes as the kernel's last argument
    # True where LlamaModel_fast_forward hands the kernels row 0's 2-D slice of the per-call masks
    # (``..._for_sdpa(...)[0][0]``, the 2024 fix of unslothai/unsloth#853, up to the 2025.x releases)
    eval_masks_2d: bool = False
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
        """Whether ``slow_attention_softcapping`` runs compiled on ``device`` in this process: Unsloth has
        not fallen back to eager there (its flag, read now), and Inductor compiles the kernel's function
        there (``_compiles_apart``, settled once per device type by one tiny float32 call). A release
        without the fallback is taken as compiled (there, a failed compile raises in the test itself)."""
        kind = torch.device(device).type
        if not self.has_eager_fallback():
            return True
        if self.kernels_module._SOFTCAP_EAGER.get(kind, False):
            return False
        if kind not in self._compiles:
            self._compiles[kind] = self._compiles_apart(device)
        return self._compiles[kind]

    def _compiles_apart(self, device: str | torch.device) -> bool:
        """Compile and call a copy of Unsloth's compiled softcapping function, under another name.

        Why a copy: Dynamo keeps, per function, what its earlier compiles saw, and a compile after them
        traces another graph (other cache keys) than a first one. A probe through Unsloth's own function
        would change the graphs of whichever test first asks, so a warm cache missed where the schedule
        moved that test. The copy has Unsloth's code and globals, is compiled as Unsloth's decorator
        compiles it (``KERNEL_COMPILE_ARGS`` and the module's ``torch_compile_options``) and keeps its own
        Dynamo state; a compile error is "no", as Unsloth's fallback takes it."""
        compiled = self.kernels_module._compiled_slow_attention_softcapping
        fn = compiled._torchdynamo_orig_callable
        name = f"gemma2_regress_probe_of_{fn.__name__}"
        names = {"co_name": name, **({"co_qualname": name} if sys.version_info >= (3, 11) else {})}
        code = fn.__code__.replace(**names)
        copy = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
        options = self.kernels_module.torch_compile_options
        probe = torch.compile(copy, **KERNEL_COMPILE_ARGS, options=options)
        q = torch.zeros(2, 2, 2, 16, device=device)
        mask = torch.zeros(2, 2, device=device)
        try:
            probe(q, q, q, mask, attention_module_stub(2, 2, 16, 16.0, 50.0), 2, 2)
        except torch.OutOfMemoryError:
            raise
        except Exception:  # Unsloth's fallback catches every other error alike
            return False
        return True

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

    # --- further handles, looked up now (for gemma2_regress.unsloth_flash) -------------------------
    def utils_module(self) -> types.ModuleType:
        """``unsloth.models._utils``, where Unsloth decides its flash path at import."""
        return importlib.import_module("unsloth.models._utils")

    def dispatch_module(self) -> types.ModuleType | None:
        """``unsloth.utils.attention_dispatch`` (None in releases without the dispatcher)."""
        try:
            return importlib.import_module("unsloth.utils.attention_dispatch")
        except ImportError:  # releases before the dispatcher imported flash-attn in the model files only
            return None

    @staticmethod
    def loaded_modules() -> list[tuple[str, types.ModuleType]]:
        """Every ``unsloth`` module loaded in this process, ``(name, module)`` sorted by name."""
        return [(n, m) for n, m in sorted(sys.modules.items()) if n == "unsloth" or n.startswith("unsloth.")]

    # --- masks, built the way LlamaModel_fast_forward builds them -------------------------------
    def _converters(self) -> tuple[Any, Any]:
        base = getattr(self.llama_module, "AttentionMaskConverter", None)
        if base is None:  # releases before 2026.8.15 import it inside LlamaModel_fast_forward, from here
            from transformers.modeling_attn_mask_utils import AttentionMaskConverter as base
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
        """The per-call sliding and global masks built from a 2-D ``attention_mask`` (evaluation).

        ``attention_mask`` is ``(bsz, kv_len)``; the queries are its last ``q_len`` positions. 4-D
        ``(bsz, 1, q_len, kv_len)``, except in releases that hand the kernels row 0's ``(q_len, kv_len)``
        slice (``eval_masks_2d``), where this follows their whole eval branch (below) and returns those
        slices. Releases without the Gemma-2 converter keep their static masks where the first conversion
        finds no mask needed (an all-ones mask within the window): then those are returned.
        """
        _, sliding = self._converters()
        kv_len = attention_mask.shape[-1]
        if sliding is not None:
            swa = self.eval_mask(attention_mask, q_len, window, dtype, sliding=True)
            return swa, self.eval_mask(attention_mask, q_len, window, dtype, sliding=False)
        prep = self.llama_module._prepare_4d_causal_attention_mask_for_sdpa
        embeds = torch.empty(attention_mask.shape[0], q_len, 1, dtype=dtype, device=attention_mask.device)
        past = kv_len - q_len
        shape = (attention_mask.shape[0], q_len)
        # LlamaModel_fast_forward's eval branch first converts the 2-D mask with the config's window; where
        # the helper finds no mask needed (None: all ones, within the window), attention_mask is None from
        # there on and the Gemma-2 layers keep the static masks.
        first = prep(attention_mask, shape, embeds, past, sliding_window=window)
        if first is None:
            return self.static_masks(kv_len, window, dtype, attention_mask.device)
        if self.eval_masks_2d:
            # Each per-call mask is the helper applied to that 4-D mask, which it returns unchanged (so the
            # global one is windowed too), sliced to row 0.
            swa = prep(first, shape, embeds, past, sliding_window=window)
            ga = prep(first, shape, embeds, past, sliding_window=None)
            return swa[0][0], ga[0][0]
        ga = prep(attention_mask, shape, embeds, past)
        return first, ga

    def eval_mask(
        self,
        attention_mask: torch.Tensor,
        q_len: int,
        window: int,
        dtype: torch.dtype,
        *,
        sliding: bool,
    ) -> torch.Tensor:
        """The one mask of ``eval_masks`` that a sliding (``sliding=True``) or a global layer gets. Where the
        release has the Gemma-2 converter, only that one is built (each is a ``(bsz, 1, q_len, kv_len)``
        float tensor: at 8k tokens, building the other one doubles the mask's cost)."""
        base, converter = self._converters()
        if converter is None:
            return self.eval_masks(attention_mask, q_len, window, dtype)[0 if sliding else 1]
        conv = converter(is_causal=True, sliding_window=window) if sliding else base(is_causal=True)
        return conv.to_4d(attention_mask, q_len, dtype, attention_mask.shape[-1])


def attention_module_stub(
    n_heads: int, n_kv_heads: int, head_dim: int, scalar: float, softcap: float
) -> types.SimpleNamespace:
    """The ``self`` the kernels read: ``.config`` (heads, kv heads, scalar, cap), ``.head_dim``,
    ``.num_key_value_groups``, and ``.num_heads`` / ``.num_key_value_heads`` (read instead of the config's
    by releases up to 2024.12, as transformers' Gemma2Attention of that time carried them). Plain
    attributes, as a Gemma2Attention module carries them."""
    config = types.SimpleNamespace(
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        query_pre_attn_scalar=scalar,
        attn_logit_softcapping=softcap,
    )
    return types.SimpleNamespace(
        config=config,
        head_dim=head_dim,
        num_key_value_groups=n_heads // n_kv_heads,
        num_heads=n_heads,
        num_key_value_heads=n_kv_heads,
    )


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


_SLICED_EVAL_MASK = re.compile(
    r"dynamic_SWA_mask\s*=\s*_prepare_4d_causal_attention_mask_for_sdpa\((?:[^()]|\([^()]*\))*\)\s*\[\s*0\s*\]\s*\[\s*0\s*\]"
)


def _eval_masks_2d(llama_module: types.ModuleType) -> bool:
    """Whether ``LlamaModel_fast_forward`` slices the per-call sliding mask to row 0's 2-D ``[0][0]``."""
    fn = getattr(llama_module, "LlamaModel_fast_forward", None)
    try:
        src = inspect.getsource(fn) if fn is not None else ""
    except (OSError, TypeError):
        src = ""
    return bool(_SLICED_EVAL_MASK.search(src))


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
        # none), never the suite's stand-in, which only ``unsloth_flash.flash_path`` binds, for a block.
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
    return Unsloth(version, kernels, llama, gemma2, _length_arg(gemma2), _eval_masks_2d(llama))


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


# LlamaModel_fast_forward's per-model static masks (or the flash path's sentinels), built on the first
# forward that needs them and kept on the model for every later one.
STATIC_MASKS = ("SWA_mask", "GA_mask")


def forget_static_masks(model: torch.nn.Module) -> None:
    """Drop the static masks (``STATIC_MASKS``) a loaded model holds, so that its next forward that needs
    them builds them again, with Unsloth's own code, as in a model just loaded.

    Why: Unsloth builds them once, in whatever mode that first forward runs. Under ``generate`` that is
    ``torch.inference_mode()``, and a tensor made there is not a view (no ``_base``), while one made
    outside is (``.squeeze(0).squeeze(0)`` of a 4-D mask). Dynamo names a view's size symbols after its
    base, so the compiled kernel's graph, and its cache keys, depended on which earlier test of the same
    worker had run the cached model first (docs/gpu.md)."""
    for m in model.modules():
        for name in STATIC_MASKS:
            if name in vars(m):
                delattr(m, name)


def pre_patch_sentinels() -> tuple[object, ...]:
    """The value(s) Unsloth's record of pre-patched transformers attributes uses for "was absent"
    (``unsloth.models.llama._MISSING``); empty if Unsloth is not imported (never imports it)."""
    mod = sys.modules.get("unsloth.models.llama")
    return (mod._MISSING,) if mod is not None and hasattr(mod, "_MISSING") else ()
