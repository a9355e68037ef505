"""A run's summary JSON (written by ``plugins.report``), read without pytest: the worst-ratio rows and
their table, and shards merged into one report.

``worst_by_property`` makes the end-of-run rows from the per-example records, ``table_lines`` the
plain table, ``markdown_lines`` the same as a Markdown table (a CI job summary). ``load`` reads one
summary JSON (a one-line ``SummaryError`` for a missing or malformed file) and ``merge`` folds the
summaries of several shards of one run into one: tests and records side by side, the worst-ratio rows
made again from all records, the exit status the worst. ``gemma2-regress report`` prints them.
``whole_tier_passed`` says whether a run was its whole tier and green (the noxfile's warm rule).
Pure: imports nothing of pytest, so a CI step can run it with any interpreter.
"""

from __future__ import annotations

import json
from pathlib import Path


class SummaryError(ValueError):
    """A summary JSON that is missing or not the suite's (the message names the file and the fix)."""


def load(path: str | Path) -> dict:
    """One summary JSON, checked to carry ``tests`` and ``records``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SummaryError(
            f"{path}: no such file; pass the summary.json a run wrote (reports/<tier>/summary.json)"
        ) from None
    except (OSError, ValueError) as exc:
        raise SummaryError(f"{path}: not JSON ({exc}); pass the summary.json a run wrote") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("tests"), dict)
        or not isinstance(data.get("records"), list)
    ):
        raise SummaryError(
            f"{path}: not a gemma2-regress summary (no 'tests' and 'records'); pass reports/<tier>/summary.json"
        )
    return data


INTERRUPTED = 2  # pytest.ExitCode.INTERRUPTED (Ctrl-C, a time bound's SIGINT); this module imports no pytest


def _interrupted(summary: dict) -> bool:
    return int(summary.get("exit_status", 0)) == INTERRUPTED


def whole_tier_passed(path: str | Path) -> bool:
    """Whether the run that wrote the summary JSON at ``path`` ran its whole tier (nothing ``narrowed`` it:
    ``suite.narrowed``) and passed (exit status 0). False for a missing or foreign file."""
    try:
        data = load(path)
    except SummaryError:
        return False
    return data.get("exit_status") == 0 and data.get("narrowed") == []


def merge(summaries: list[dict]) -> dict:
    """Shards of one run as one summary: tests (a test in two shards keeps the failing outcome), records
    concatenated, ``properties`` made again from all records, ``exit_status`` the largest, ``wall_s`` the
    longest shard's, ``versions`` the first's. Where a shard was interrupted, an example of a test with no
    outcome in any shard counts as interrupted (``worst_by_property``)."""
    if not summaries:
        raise SummaryError("no summary to merge")
    tests: dict[str, dict] = {}
    for s in summaries:
        for node, entry in s["tests"].items():
            if node not in tests or entry.get("outcome") in ("failed", "error"):
                tests[node] = entry
    records = [r for s in summaries for r in s["records"]]
    return {
        "versions": summaries[0].get("versions", {}),
        "exit_status": max(int(s.get("exit_status", 0)) for s in summaries),
        "wall_s": max(float(s.get("wall_s", 0.0)) for s in summaries),
        "tests": tests,
        "properties": worst_by_property(records, tests, interrupted=any(_interrupted(s) for s in summaries)),
        "records": records,
        "shards": len(summaries),
    }


def markdown_lines(rows: list[dict]) -> list[str]:
    """The worst-ratio table as Markdown (1.0 = at the tolerance bound)."""
    lines = [
        "| property | target | examples | bad | known | worst ratio | worst case |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['property']} | `{r['target']}` | {r['examples']} | {r['bad']} | {r['known']} | "
            f"{r['worst_ratio']:.3g} | `{r['worst_case']}` |"
        )
    return lines


def worst_by_property(
    records: list[dict], tests: dict[str, dict] | None = None, *, interrupted: bool = False
) -> list[dict]:
    """One row per (property, target): examples run, failures (``bad``), the worst ratio and its case,
    and where the records have them (model level) the peak GPU memory of any example (``peak_gib``)
    and the seconds spent compiling, running and in the reference, summed over the examples.

    An example of a test that xfailed as a recorded upstream bug (``tests``: ``Run.tests``) counts as
    ``known``, not ``bad``, and stays out of the worst ratio: its failure is the record, not news. An
    example cut short by an interrupt (a time bound's SIGINT, Ctrl-C: verdict ``interrupted``) was never
    judged: it counts as ``interrupted``, not ``bad``. So does, in an ``interrupted`` run, any example of a
    test with no outcome in ``tests``: its worker wrote the record, but the run stopped before the test's
    report reached the controller, so whether it xfailed as a recorded bug is unknown.
    """
    tests = tests or {}
    rows: dict[tuple[str, str], dict] = {}
    for r in records:
        key = (r["property"], r["target"])
        row = rows.setdefault(
            key,
            {
                "property": key[0],
                "target": key[1],
                "examples": 0,
                "bad": 0,
                "known": 0,
                "interrupted": 0,
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
        outcome = tests.get(r.get("test", ""), {}).get("outcome")
        if r["verdict"] == "interrupted" or (interrupted and outcome is None):
            row["interrupted"] += 1
            continue
        if outcome == "xfailed":
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
    cut = {f"{r['property']} {r['target']}": r["interrupted"] for r in rows if r.get("interrupted")}
    if cut:
        lines.append(
            "interrupted (cut short by a time bound or Ctrl-C, not judged, not in 'bad'): "
            + ", ".join(f"{k} {n}" for k, n in cut.items())
        )
    timed = [r for r in rows if "compile_s" in r]
    if timed:
        total = {k: sum(r[k] for r in timed) for k in ("compile_s", "run_s", "reference_s")}
        lines.append(
            f"model-level time, all examples: Unsloth calls that compiled {total['compile_s']:.1f}s, "
            f"that only ran {total['run_s']:.1f}s; reference {total['reference_s']:.1f}s"
        )
    return lines
