"""Collects per-property measurements and per-test verdicts during a run; conftest writes them as JSON.

Each record: property, target, verdict, error ratio, case. The summary keeps the worst ratio per
(property, target), which is what the end-of-run table and ``reports/<tier>/summary.json`` show.

Every process (pytest itself, or each xdist worker) also appends its records, one JSON line each,
to a spool folder the controlling pytest makes (``SPOOL_ENV``): a run stopped by a time limit still
reports every example that finished, also those of workers that were killed before handing back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gemma2_regress.atomic import json_default

RECORDS: list[dict] = []
TESTS: dict[str, dict] = {}  # node id -> {"outcome", "duration_s"}, on the controlling process
SPOOL_ENV = "GEMMA2_REGRESS_SPOOL"
TIER_ENV = "GEMMA2_REGRESS_TIER"  # set by `nox -s cpu` / `nox -s gpu` and tox: which tier this run is


def report_path(name: str, override_env: str, tier: str | None = None) -> str:
    """Where this run writes its report ``name`` (``summary.json``, ``costs.json``): the path in the
    environment variable ``override_env`` if set, else ``reports/<tier>/<name>``, with the tier from
    ``GEMMA2_REGRESS_TIER`` (``cpu``/``gpu``; ``pytest`` for a run outside nox and tox), so that no
    tier or session overwrites another's reports. ``{tier}`` in the override is filled in too; ``tier``
    given: that tier's path (as its run will see it)."""
    tier = tier or os.environ.get(TIER_ENV) or "pytest"
    return os.environ.get(override_env, f"reports/{{tier}}/{name}").replace("{tier}", tier)


def record(prop: str, target: str, verdict: str, ratio: float, case: str, **extra: object) -> None:
    """Remember one measurement (cheap; called once per Hypothesis example), with the running test's
    node id (``test``) when pytest runs it."""
    rec = {"property": prop, "target": target, "verdict": verdict, "ratio": ratio, "case": case, **extra}
    current = os.environ.get("PYTEST_CURRENT_TEST")  # "tests/x.py::test_y[p] (call)"
    if current and "test" not in rec:
        rec["test"] = current.rsplit(" ", 1)[0]
    RECORDS.append(rec)
    folder = os.environ.get(SPOOL_ENV)
    if folder and Path(folder).is_dir():
        name = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}.jsonl"
        with open(Path(folder) / name, "a") as f:
            f.write(json.dumps(rec, default=json_default) + "\n")


def read_spool(folder: str | os.PathLike) -> list[dict]:
    """Every record appended under ``folder``, file by file; a line cut short by a kill is skipped."""
    out = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def note_test(rep: object) -> None:
    """Keep a test's verdict from its pytest reports: passed, failed, error (setup/teardown),
    skipped, xfailed or xpassed, with the call's duration."""
    nodeid, when = rep.nodeid, rep.when  # type: ignore[attr-defined]
    if hasattr(rep, "wasxfail"):
        outcome = "xfailed" if rep.skipped else "xpassed"  # type: ignore[attr-defined]
    elif rep.failed:  # type: ignore[attr-defined]
        outcome = "failed" if when == "call" else "error"
    elif rep.skipped:  # type: ignore[attr-defined]
        outcome = "skipped"
    elif when == "call":
        outcome = "passed"
    else:
        return  # a passing setup or teardown says nothing new
    entry = TESTS.setdefault(nodeid, {"outcome": outcome, "duration_s": 0.0})
    if when == "call" or outcome in ("error", "failed"):
        entry["outcome"] = outcome
    entry["duration_s"] = round(entry["duration_s"] + float(rep.duration), 3)  # type: ignore[attr-defined]


def worst_by_property(records: list[dict] | None = None, tests: dict[str, dict] | None = None) -> list[dict]:
    """One row per (property, target): examples run, failures (``bad``), the worst ratio and its case,
    and where the records have them (model level) the peak GPU memory of any example (``peak_gib``)
    and the seconds spent compiling, running and in the reference, summed over the examples.

    An example of a test that xfailed as a recorded upstream bug (``tests``: ``TESTS``) counts as
    ``known``, not ``bad``, and stays out of the worst ratio: its failure is the record, not news.
    """
    tests = TESTS if tests is None else tests
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
                "known": 0,
                "worst_ratio": 0.0,
                "worst_case": "",
            },
        )
        row["examples"] += 1
        if "peak_gib" in r:
            row["peak_gib"] = max(row.get("peak_gib", 0.0), r["peak_gib"])
        for k in ("compile_s", "run_s", "reference_s"):
            if k in r:
                row[k] = round(row.get(k, 0.0) + r[k], 3)
        if tests.get(r.get("test", ""), {}).get("outcome") == "xfailed":
            row["known"] += r["verdict"] != "ok"
            continue
        row["bad"] += r["verdict"] != "ok"
        if r["ratio"] >= row["worst_ratio"]:
            row["worst_ratio"], row["worst_case"] = r["ratio"], r["case"]
    return sorted(rows.values(), key=lambda r: (r["property"], r["target"]))


def table_lines(rows: list[dict]) -> list[str]:
    """The end-of-run table of ``worst_by_property`` rows, and the model-level time split (summed from
    the records, so it covers every xdist worker)."""
    lines = [
        f"{'property':34} {'target':52} {'examples':>8} {'bad':>4} {'known':>5} {'worst':>8} {'peak GiB':>8}"
    ]
    for r in rows:
        peak = f"{r['peak_gib']:>8.2f}" if "peak_gib" in r else f"{'-':>8}"
        lines.append(
            f"{r['property'][:34]:34} {r['target'][:52]:52} {r['examples']:>8} {r['bad']:>4} {r['known']:>5}"
            f" {r['worst_ratio']:>8.3g} {peak}"
        )
    if any(r["known"] for r in rows):
        lines.append(
            "known: failing examples of tests that xfailed as recorded upstream bugs (not in 'worst')"
        )
    timed = [r for r in rows if "compile_s" in r]
    if timed:
        total = {k: sum(r[k] for r in timed) for k in ("compile_s", "run_s", "reference_s")}
        lines.append(
            f"model-level time, all examples: Unsloth calls that compiled {total['compile_s']:.1f}s, "
            f"that only ran {total['run_s']:.1f}s; reference {total['reference_s']:.1f}s"
        )
    return lines
