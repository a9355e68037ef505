"""Showing the gate works: re-measure a few cells clean and with a planted slowdown, compare both.

After a run, ``gate_demo`` picks up to ``n`` cells where Unsloth ran (longest first among those
at or past the window, batch 1), measures them again twice in the same process (so nothing is
compiled again): once clean, once with ``impls.planted_slowdown(2)`` active, and compares each
against the run's own figures with ``compare``. The clean re-run must pass and the planted one must
fail; the result says whether both held.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from . import bench, stats
from .gatecheck import compare, render


def pick_cells(payload: dict, n: int = 2) -> list[str]:
    """Keys of cells where Unsloth's fwdbwd ran for >= 1 ms: batch 1 first, then lengths >= 4096
    nearest 8192 (long enough to be far above noise, short enough to re-measure quickly)."""
    ok = [
        c
        for c in payload["cells"]
        if c["results"].get("unsloth", {}).get("fwdbwd", {}).get("status") == "ok"
        and c["results"]["unsloth"]["fwdbwd"]["median_ms"] >= 1.0
    ]
    ok.sort(key=lambda c: (c["batch"] != 1, c["length"] < 4096, abs(math.log2(c["length"] / 8192))))
    return [c["key"] for c in ok[:n]]


def gate_demo(
    payload: dict,
    opts: bench.Options,
    threshold: float = stats.BARE_THRESHOLD,
    n: int = 2,
    log: Callable[[str], None] = bench.say,
) -> dict:
    """Run the demonstration; returns ``{"cells", "clean": {...}, "planted": {...}, "holds": bool}``."""
    keys = pick_cells(payload, n)
    if not keys:
        return {
            "cells": [],
            "holds": False,
            "note": "no cell where Unsloth ran for >= 1 ms to demonstrate on",
        }
    cells = [c for c in opts.cells if c.key in keys]
    base = bench.select_cells(payload, keys)
    out: dict = {"cells": keys, "min_effect": stats.MIN_EFFECT, "threshold": threshold}
    for name, factor in (("clean", 0), ("planted", 2)):
        o = dataclasses.replace(
            opts, cells=cells, out=None, plant_slowdown=factor, budget_s=None, label=f"gate-demo-{name}"
        )
        log(
            f"gate demo: re-measuring {', '.join(keys)} {'with a planted 2x slowdown' if factor else 'clean'}"
        )
        cand = bench.run(o, log=lambda s: None)
        ok, rows = compare(cand, base, threshold)
        log(render(ok, rows, threshold))
        out[name] = {"ok": ok, "rows": rows}
    out["holds"] = out["clean"]["ok"] and not out["planted"]["ok"]
    log(
        f"gate demo: clean {'passes' if out['clean']['ok'] else 'FAILS'}, planted "
        f"{'fails' if not out['planted']['ok'] else 'PASSES'} -> demonstration {'holds' if out['holds'] else 'DOES NOT HOLD'}"
    )
    return out
