"""Collects per-property measurements during a run; conftest writes them as JSON at the end.

Each record: property, target, verdict, error ratio, case. The summary keeps the worst ratio per
(property, target), which is what the end-of-run table and ``reports/summary.json`` show.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

RECORDS: list[dict] = []


def record(prop: str, target: str, verdict: str, ratio: float, case: str, **extra: object) -> None:
    """Remember one measurement (cheap; called once per Hypothesis example)."""
    RECORDS.append(
        {"property": prop, "target": target, "verdict": verdict, "ratio": ratio, "case": case, **extra}
    )


def worst_by_property(records: list[dict] | None = None) -> list[dict]:
    """One row per (property, target): examples run, failures, worst ratio and its case."""
    rows: dict[tuple[str, str], dict] = {}
    for r in RECORDS if records is None else records:
        key = (r["property"], r["target"])
        row = rows.setdefault(
            key,
            {
                "property": key[0],
                "target": key[1],
                "examples": 0,
                "bad": 0,
                "worst_ratio": 0.0,
                "worst_case": "",
            },
        )
        row["examples"] += 1
        row["bad"] += r["verdict"] != "ok"
        if r["ratio"] >= row["worst_ratio"]:
            row["worst_ratio"], row["worst_case"] = r["ratio"], r["case"]
    return sorted(rows.values(), key=lambda r: (r["property"], r["target"]))


def write_json_atomic(path: str | os.PathLike, payload: object) -> None:
    """Write JSON so that a reader never sees half a file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, default=_default)
        f.write("\n")
    os.replace(tmp, path)


def _default(o: object) -> object:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)
