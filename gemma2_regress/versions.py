"""The versions that a verdict depends on, printed at the start of every run and in every failure."""

from __future__ import annotations

import functools
import importlib.metadata
import platform


def _v(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def versions() -> dict[str, str]:
    """Python, torch, transformers, unsloth, unsloth_zoo, and the GPU (name, capability) if any."""
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "unsloth", "unsloth_zoo", "trl", "hypothesis"):
        out[dist] = _v(dist)
    try:
        import torch

        if torch.cuda.is_available():
            cap = torch.cuda.get_device_capability()
            out["gpu"] = f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}) x{torch.cuda.device_count()}"
        else:
            out["gpu"] = "none"
    except ImportError:
        out["gpu"] = "unknown (no torch)"
    return out


def one_line() -> str:
    return " ".join(f"{k}={v}" for k, v in versions().items())
