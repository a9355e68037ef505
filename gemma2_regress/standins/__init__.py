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
``flash_attn_in_use()`` says which flash-attn ``import flash_attn`` gives now, without importing it;
``flash_attn_standin_hidden()`` hides the stand-in for a block (``unsloth_adapter.load`` imports
Unsloth inside it, so Unsloth's import-time checks see this machine's own flash-attn, or none).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator

STANDIN_VERSION = "2.6.3"
STANDIN = f"reference stand-in {STANDIN_VERSION}"
# This folder itself goes on sys.path: its only importable top-level name is then the ``flash_attn``
# package (``__init__.py`` is no module name), so nothing else of the suite leaks onto sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
_STANDIN_DIR = os.path.join(_HERE, "flash_attn")


def _is_standin(origin: str | None) -> bool:
    return origin is not None and os.path.abspath(origin).startswith(_STANDIN_DIR + os.sep)


def _flash_attn_modules() -> list[str]:
    return [n for n in sys.modules if n == "flash_attn" or n.startswith("flash_attn.")]


def standin_modules() -> list[str]:
    """The ``flash_attn`` modules in ``sys.modules`` that are this stand-in's."""
    return [n for n in _flash_attn_modules() if _is_standin(getattr(sys.modules[n], "__file__", None))]


def _forget_flash_attn() -> None:
    """Drop ``flash_attn`` and its submodules from ``sys.modules`` (a failed real import's leftovers)."""
    for name in _flash_attn_modules():
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
        return STANDIN
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
    return STANDIN


def flash_attn_in_use() -> str:
    """Which flash-attn ``import flash_attn`` gives in this process now, without importing it:
    ``"flash-attn X.Y.Z (real)"``, ``"reference stand-in 2.6.3"`` or ``"none"``."""
    loaded = sys.modules.get("flash_attn")
    if loaded is not None:
        if _is_standin(getattr(loaded, "__file__", None)):
            return STANDIN
        return f"flash-attn {getattr(loaded, '__version__', '?')} (real)"
    try:
        spec = importlib.util.find_spec("flash_attn")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "none"
    if _is_standin(spec.origin):
        return STANDIN
    try:
        version = importlib.metadata.version("flash_attn")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"flash-attn {version} (real)"


@contextlib.contextmanager
def flash_attn_standin_hidden() -> Iterator[None]:
    """Within the block ``import flash_attn`` does not find the stand-in, as in a process that never
    called ``use_flash_attn_standin``; a real flash-attn is left alone. Afterwards the stand-in is back
    at its place on ``sys.path`` and its modules in ``sys.modules`` (unless a real ``flash_attn`` was
    imported meanwhile)."""
    mods = {n: sys.modules[n] for n in standin_modules()}
    where = [i for i, p in enumerate(sys.path) if p == _HERE]
    if not mods and not where:
        yield
        return
    for name in mods:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p != _HERE]
    importlib.invalidate_caches()
    try:
        yield
    finally:
        if where and _HERE not in sys.path:
            sys.path.insert(min(where[0], len(sys.path)), _HERE)
        if "flash_attn" not in sys.modules:
            sys.modules.update(mods)
        importlib.invalidate_caches()
