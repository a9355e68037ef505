"""A throwaway pytest plugin that times the cyclic garbage collector in each test process (docs/perf.md).

Load it with ``-p gctime_probe`` and this folder on ``PYTHONPATH`` (or the file copied beside the tree's
root, where the GPU tier's ``PYTHONPATH`` reaches it). Each process writes
``/tmp/gctime-<xdist worker or main>.json`` at its end: seconds and collections per generation
(``by_gen``, ``n``), objects collected, and how many objects the collector still tracked.
"""

from __future__ import annotations

import gc
import json
import os
import time

_t: dict = {"start": None, "by_gen": [0.0, 0.0, 0.0], "n": [0, 0, 0], "collected": 0}


def _cb(phase: str, info: dict) -> None:
    if phase == "start":
        _t["start"] = time.perf_counter()
    elif _t["start"] is not None:
        g = info["generation"]
        _t["by_gen"][g] += time.perf_counter() - _t["start"]
        _t["n"][g] += 1
        _t["collected"] += info.get("collected", 0)
        _t["start"] = None


gc.callbacks.append(_cb)


def pytest_unconfigure(config: object) -> None:
    name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"/tmp/gctime-{name}.json", "w") as f:
        json.dump({**_t, "objects": len(gc.get_objects())}, f)
