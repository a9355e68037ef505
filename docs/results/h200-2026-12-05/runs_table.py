"""The tables of docs/gpu.md's "The H200 runs of 2026-12-05" (machines 11, 12 and 13) from this folder's files: per run, its
workers, pytest's seconds and the tier's wall, the outcome, the test calls summed with their Dynamo /
Inductor / autotuning seconds, FX-graph hits / misses, memory waits, and each worker's first test
counted from the session start (every worker configured), from the startup probe's record.

    python3 docs/results/h200-2026-12-05/runs_table.py
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

HERE = Path(__file__).parent
START, FIRST = "session start (every configure done)", "first test's set-up"
# each machine's runs as commit-machine-name, in run order; machine 11 began from an empty compile cache,
# machine 12 from the pack carried from 13400e7, machine 13 from an empty cache again (docs/gpu.md)
SERIES = {
    "m11": [
        f"bc277e3-m11-{run}"
        for run in ("cold6", "warm", "warm2", "warm-w8", "warm-w7", "again-w6", "again-w7", "again-w8")
    ],
    "m12": [f"0bb335e-m12-{run}" for run in ("carried", "warm", "warm2", "warm3", "warm4", "warm5")],
    "m13": [f"4f8ff95-m13-{run}" for run in ("cold", "second", "warm", "carried", "warm2", "warm3", "warm4")],
}
RUNS = [run for runs in SERIES.values() for run in runs]


def main() -> None:
    for run in RUNS:
        stem = f"tier-{run}"
        text = (HERE / f"{stem}.log").read_text(errors="replace")
        console = (HERE / f"{stem}-console.log").read_text(errors="replace")
        with gzip.open(HERE / f"{stem}-costs.json.gz", "rt") as f:
            c = json.load(f)["compile"]
        with gzip.open(HERE / f"{stem}-probe.json.gz", "rt") as f:
            workers = [v for k, v in json.load(f)["startup"].items() if k.startswith("gw")]
        first = [w[FIRST] - w[START] for w in workers]
        pytest_s = re.findall(r"in ([\d.]+)s \(", text)[-1]
        wall = re.findall(r"tier rc=\d+ wall=(\d+)s", console)[0]
        waited = (re.findall(r"([\d.]+) s waited for memory in all", text) or ["(budget off)"])[0]
        outcome = re.findall(r"=+ (\d+ passed(?:, \d+ \w+)*)", text)[-1]
        autotune = c["first_call_autotune_s"] + c["template_autotune_s"]
        print(
            f"{run:22s} {len(workers)} workers | {pytest_s} s ({wall} s) | {outcome} | "
            f"{c['tests_s']:.1f} s ({c['trace_s']:.1f} / {c['inductor_s']:.1f} / {autotune:.1f} s) | "
            f"{c['fxgraph_hit']:.0f} / {c['fxgraph_miss']:.0f} | {waited} s | {min(first):.1f} to {max(first):.1f} s"
        )


if __name__ == "__main__":
    main()
