"""Performance of Unsloth's slow softcapping attention against the best softcapping attention on the
same GPU (flex attention) and an SDPA floor, at Gemma-2 2B/9B shapes; and the release gate's check.

Modules: ``grid`` (shapes, cells, FLOPs), ``impls`` (the implementations, the planted slowdown),
``timing`` (timers, peak memory, OOM, ceilings), ``bench`` (the interleaved run, JSON), ``table``,
``plot``, ``stats`` (the gate's statistic: a bootstrap interval of the ratio of medians), ``gatecheck``
(the gate: ``compare``), ``demo`` (the gate shown passing and failing), ``sensitivity`` (the gate's false
alarms and detection rate on planted slowdowns), ``cli``.
"""

import importlib

__all__ = ["Options", "compare", "run"]
_WHERE = {"Options": "bench", "run": "bench", "compare": "gatecheck"}


def __getattr__(name: str) -> object:
    """``Options``, ``run`` and ``compare`` load torch on first use: the package's argument checks
    (``cli.check_run_args``) run where torch is not installed yet (nox, before building the env)."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
