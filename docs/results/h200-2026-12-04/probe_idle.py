"""Per run of the GPU tier: when each xdist worker's collection ended, when its first test began, and the
mean over the workers of the gap between the two, from the startup probe's files in this folder.

    python3 docs/results/h200-2026-12-04/probe_idle.py
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

DONE, FIRST = "collection done (gc frozen)", "first test's set-up"

for path in sorted(Path(__file__).parent.glob("*-probe.json*")):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        workers = {k: v for k, v in json.load(f)["startup"].items() if k.startswith("gw")}
    done = [w[DONE] for w in workers.values()]
    first = [w[FIRST] for w in workers.values()]
    idle = sum(b - a for a, b in zip(done, first, strict=True)) / len(workers)
    print(
        f"{path.name.split('-probe')[0]:28s} collection done {min(done):5.1f} to {max(done):5.1f} s, "
        f"first test {min(first):5.1f} to {max(first):5.1f} s, mean gap {idle:.1f} s"
    )
