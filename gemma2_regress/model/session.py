"""What one run of model-level examples shares: where the time goes, and where each example's line goes.

A ``ModelSession`` is made once per run (in the suite: a pytest fixture, ``fixtures/model.py``) and
handed to every target built for that run; the property functions read it from their target. It holds

- ``timings``  target (Unsloth) calls that compiled a graph vs calls that only ran, the eager
               reference's calls, and Unsloth's load time; ``timed`` adds one block to it;
- ``write``    where the per-example lines go (the suite hands in pytest's terminal writer).

Peak GPU memory is the process's (``torch.cuda``): ``reset_peak`` before an example, ``peak_gib`` after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


@dataclasses.dataclass
class Timings:
    """Where the GPU tier's time goes: target (Unsloth) calls that compiled a graph vs calls that only
    ran, the eager reference's calls, and loading."""

    compile_s: float = 0.0
    run_s: float = 0.0
    compile_calls: int = 0
    run_calls: int = 0
    reference_s: float = 0.0
    load_s: float = 0.0

    def add(self, seconds: float, compiled: bool, reference: bool = False) -> None:
        if reference:
            self.reference_s += seconds
        elif compiled:
            self.compile_s += seconds
            self.compile_calls += 1
        else:
            self.run_s += seconds
            self.run_calls += 1

    def lines(self) -> list[str]:
        """The time split, for the end of the run."""
        return [
            f"Unsloth from_pretrained: {self.load_s:.1f}s in total",
            f"target calls that compiled a graph: {self.compile_calls} taking {self.compile_s:.1f}s; "
            f"target calls that only ran: {self.run_calls} taking {self.run_s:.1f}s",
            f"eager reference (float64 golden + same-dtype baseline): {self.reference_s:.1f}s",
        ]


@dataclasses.dataclass
class ModelSession:
    """The timings and the line writer of one run (see the module docstring)."""

    timings: Timings = dataclasses.field(default_factory=Timings)
    write: Callable[[str], None] = print


def _graphs() -> int:
    """How many graphs torch.compile has built so far in this process (0 if unknown)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return 0


@contextlib.contextmanager
def timed(out: dict[str, Any], timings: Timings, reference: bool = False) -> Iterator[None]:
    """Time a block (synchronising CUDA) and note whether it compiled: ``out["seconds"]``,
    ``out["compiled"]``; adds to ``timings`` (to the reference's share with ``reference=True``)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    g0, t0 = _graphs(), time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - t0
    out["compiled"] = _graphs() > g0
    timings.add(out["seconds"], out["compiled"], reference)


def peak_gib() -> float:
    """Peak CUDA memory since the last ``reset_peak()``, in GiB (0 without CUDA)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
