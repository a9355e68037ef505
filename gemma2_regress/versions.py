"""The versions that a verdict depends on, printed at the start of every run and in every failure."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import sys

from gemma2_regress import toolslock
from gemma2_regress.gpu_check import cuda_device_count


def _v(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def tools() -> tuple[str, list[str]]:
    """The digest of the test tools' lock (``requirements/test.txt``; ``none: <why>`` without one) and
    how the installed tools differ from it (``["hypothesis 6.155.2 != locked 6.170.17"]``, or empty)."""
    try:
        pins = toolslock.read(toolslock.TEST_LOCK)
    except toolslock.LockError as exc:
        return f"none: {exc}", []
    return toolslock.digest(pins), toolslock.drift(pins)


def tools_line() -> str:
    """One header line: the lock's digest and whether the installed tools match it."""
    lock, drift = tools()
    if lock.startswith("none"):
        return f"tools-lock={lock}"
    where = toolslock.TEST_LOCK.relative_to(toolslock.LOCK_DIR.parent)
    if not drift:
        return f"tools-lock={lock} ({where}): installed tools match"
    return (
        f"tools-lock={lock} ({where}): WARNING, installed tools differ: {'; '.join(drift)} "
        f"(rebuild the environment, e.g. `rm -rf .nox/cpu`, or pip install them with `-c {where}`)"
    )


@functools.cache
def versions() -> dict[str, str]:
    """Python, torch, transformers, unsloth, unsloth_zoo, the tools' lock digest (and any drift from
    it), and the GPU (name, capability; ``none`` without one) where this process has imported torch.
    Cached: the first call decides, so the suite's header imports torch before it asks."""
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "unsloth", "unsloth_zoo", "trl", "hypothesis"):
        out[dist] = _v(dist)
    lock, drift = tools()
    out["tools_lock"] = lock.split(":", 1)[0] if lock.startswith("none") else lock
    if drift:
        out["tools_drift"] = "; ".join(drift)
    # Asked only of a torch this process already imported: a run that never needs torch (a bisect's or
    # a self-test's child pytest) would otherwise pay ~1.3 s for the import just to write this line.
    torch = sys.modules.get("torch")
    if torch is None:
        out["gpu"] = "not asked (torch not imported)"
    elif torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        out["gpu"] = f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}) x{cuda_device_count()}"
    else:
        out["gpu"] = "none"
    return out


def one_line() -> str:
    """``key=value`` pairs of ``versions()`` on one line (run headers, failure messages)."""
    return " ".join(f"{k}={v}" for k, v in versions().items())
