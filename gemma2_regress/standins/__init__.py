"""Stand-ins for dependencies that cannot be installed here, made importable only inside a test process.

Each stand-in follows its dependency's documented semantics (the docstrings and test references of
the real project, named in the stand-in's own docstring), is proven against the suite's references
in ``tests/oracle``, and never replaces a real installation that imports.

``flash_attn/``  flash-attn 2.6.3's Python interface (``flash_attn_func``, ``flash_attn_varlen_func``,
                 ``flash_attn_with_kvcache``) in plain PyTorch: a reference that checks how a caller
                 uses flash-attn, not flash-attn's CUDA kernels (``docs/flash.md``).

``use_flash_attn_standin()`` puts this folder first on ``sys.path`` in the calling process only, so
that ``import flash_attn`` finds the stand-in; nothing in the package calls it at import time and
nothing here imports ``flash_attn`` (or any other part of the package) when imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

STANDIN_VERSION = "2.6.3"
# This folder itself goes on sys.path: its only importable top-level name is then the ``flash_attn``
# package (``__init__.py`` is no module name), so nothing else of the suite leaks onto sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
_STANDIN_DIR = os.path.join(_HERE, "flash_attn")


def _is_standin(origin: str | None) -> bool:
    return origin is not None and os.path.abspath(origin).startswith(_STANDIN_DIR + os.sep)


def _forget_flash_attn() -> None:
    """Drop ``flash_attn`` and its submodules from ``sys.modules`` (a failed real import's leftovers)."""
    for name in [n for n in sys.modules if n == "flash_attn" or n.startswith("flash_attn.")]:
        del sys.modules[name]


def use_flash_attn_standin() -> str:
    """Make ``import flash_attn`` work in this process and say which flash-attn it gives.

    A real flash-attn that imports (``flash_attn.flash_attn_interface`` included, which loads its
    CUDA extension) is kept: returns ``"flash-attn X.Y.Z (real)"``. Otherwise this folder goes first
    on ``sys.path`` (idempotent) and ``"reference stand-in 2.6.3"`` is returned; a real but broken
    install is shadowed, as Unsloth would have given up on it anyway. Only ``sys.path`` and
    ``sys.modules`` of the calling process change; Unsloth is not touched.
    """
    loaded = sys.modules.get("flash_attn")
    if loaded is not None and _is_standin(getattr(loaded, "__file__", None)):
        return f"reference stand-in {STANDIN_VERSION}"
    spec = importlib.util.find_spec("flash_attn") if loaded is None else loaded.__spec__
    if spec is not None and not _is_standin(spec.origin):
        try:
            real = importlib.import_module("flash_attn")
            importlib.import_module("flash_attn.flash_attn_interface")
            return f"flash-attn {getattr(real, '__version__', '?')} (real)"
        except Exception:  # a broken real install: Unsloth too would treat flash-attn as absent
            _forget_flash_attn()
    if sys.path[:1] != [_HERE]:  # first, ahead of a broken real install
        if _HERE in sys.path:
            sys.path.remove(_HERE)
        sys.path.insert(0, _HERE)
    importlib.invalidate_caches()  # the finders cache directory listings; make the new entry visible
    found = importlib.util.find_spec("flash_attn")
    if found is None or not _is_standin(found.origin):
        raise RuntimeError(f"flash-attn stand-in: `flash_attn` still resolves to {found and found.origin}")
    return f"reference stand-in {STANDIN_VERSION}"
