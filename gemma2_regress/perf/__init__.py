"""Performance of Unsloth's slow softcapping attention against the best softcapping attention on the
same GPU (flex attention) and an SDPA floor, at Gemma-2 2B/9B shapes; and the release gate's check.

Modules: ``grid`` (shapes, cells, FLOPs), ``impls`` (the implementations, the planted slowdown),
``timing`` (timers, peak memory, OOM, ceilings), ``bench`` (the interleaved run, JSON), ``table``,
``plot``, ``gatecheck`` (the gate: ``compare``), ``demo`` (the gate shown passing and failing), ``cli``.
"""

from .bench import Options, run
from .gatecheck import compare

__all__ = ["Options", "compare", "run"]
