"""Per run of this folder, each float32 ``test_evaluate_past_window`` test: its worker, whether it was the
first trainer test on that worker's cached float32 model ("first") or came after one ("later"), and its
FX-graph hits / misses; then, for the one graph per first/later a test would compile, the runs where a
test hit a graph no earlier test had compiled, or missed one that an earlier run had.

    python3 docs/results/h200-2026-12-05/evaluate_order.py
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from runs_table import HERE, SERIES  # this folder and each machine's runs, in run order


def uses_a_trainer(test: str) -> bool:
    """A test that hands the worker's cached float32 model to a Trainer (evaluate or packing)."""
    return ("evaluate" in test or "packing" in test) and ("float32" in test or "flash_evaluate" in test)


def show_run(run: str, compiled: set[str]) -> set[str]:
    """Print each float32 evaluate test of ``run`` as first or later on its worker, with its FX hits and
    misses, flagging a hit no earlier test (of ``compiled``, or of this run) could explain, and a miss of
    what an earlier run compiled; return the orders this run compiled."""
    with gzip.open(HERE / f"tier-{run}-costs.json.gz", "rt") as f:
        tests = sorted(json.load(f)["tests"], key=lambda t: t["start_s"])
    print(run)
    this_run: set[str] = set()
    for t in tests:
        if "test_evaluate_past_window" not in t["test"] or "float32" not in t["test"]:
            continue
        before = [
            u
            for u in tests
            if u["worker"] == t["worker"] and u["start_s"] < t["start_s"] and uses_a_trainer(u["test"])
        ]
        order = "later" if before else "first"
        c = t["compile"]
        hit = c["fxgraph_miss"] == 0
        odd = ""
        if hit and order not in compiled | this_run:
            odd = "  (hit a graph no earlier test compiled)"
        elif not hit and order in compiled:
            odd = "  (missed a graph an earlier run compiled)"
        name = t["test"].split("::")[1]
        print(
            f"  {name:50s} {t['worker']:4s} {order:5s} FX {c['fxgraph_hit']:.0f} / {c['fxgraph_miss']:.0f}{odd}"
        )
        this_run.add(order)
    return this_run


for runs in SERIES.values():
    # a machine starts from its own cache (machine 12: 13400e7's pack, which this folder does not show)
    compiled: set[str] = set()
    for run in runs:
        compiled |= show_run(run, compiled)
