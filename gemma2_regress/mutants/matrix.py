"""What the kill matrix is: which tests each mutant runs, what a run's results mean, how it is printed.

The columns are the test modules under ``MODULE_DIRS``; a row is one mutant on one tier, built from
one pytest run (anything with :class:`RunLike`'s fields: ``killmatrix.Run``). Each cell is one of
``STATES`` (meanings: ``killmatrix``'s docstring and docs/mutants.md); each row has a status
(``killed``, ``killed_unexpected``, ``survived``, ``survived_known_gap``, ``not_applicable``,
``unreachable``, ``error``) that decides the exit status. Pure functions: nothing here runs a process
or writes a file.

Imports ``catalogue`` and ``gemma2_regress.reference.verdicts``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from gemma2_regress.mutants.catalogue import CPU_PATHS, Mutant
from gemma2_regress.reference import verdicts

SCHEMA = "gemma2-regress/killmatrix/1"
MODULE_DIRS = ("tests/kernel", "tests/model", "tests/trainer")
STATES = ("KILLED", "survived", "not-run", "unreachable", "n/a", "skipped", "error")
SYMBOL = {"unreachable": "-", "not-run": "not-run"}  # how a cell state is printed, where not as is


class RunLike(Protocol):
    """What the matrix reads of one pytest run: ``tests`` are per-test dicts (module, test, outcome,
    message; a failure adds ``failures``, ``verdict``, ``counterexample``), ``status`` the plugin's
    status file (None when it wrote none)."""

    rc: int
    wall_s: float
    tests: list[dict]
    status: dict | None
    output_tail: str
    command: list[str]


# --- selections ------------------------------------------------------------------------------------
def modules(root: Path) -> list[str]:
    """The matrix's columns: every test module under ``MODULE_DIRS`` of the repository at ``root``."""
    return sorted(str(p.relative_to(root)) for d in MODULE_DIRS for p in (root / d).glob("test_*.py"))


def selection(mutant: Mutant, tier: str, full: bool = False) -> tuple[tuple[str, ...], str]:
    """(paths, -k expression) of a mutant's fast selection on a tier (``full``: the whole tier)."""
    if full:
        return (CPU_PATHS if tier == "cpu" else MODULE_DIRS), ""
    if tier == "cpu":
        return mutant.cpu_paths, mutant.cpu_select
    return mutant.gpu_paths, mutant.gpu_select


def union_selection(chosen: list[Mutant], tier: str, full: bool = False) -> tuple[tuple[str, ...], str]:
    """What the baseline runs: every path and -k expression any chosen mutant uses on this tier."""
    paths: list[str] = []
    exprs: list[str] = []
    for m in chosen:
        if tier not in m.tiers:
            continue
        p, k = selection(m, tier, full)
        paths += [x for x in p if x not in paths]
        if not k:
            exprs = []
            break
        if k not in exprs:
            exprs.append(k)
    return tuple(paths), " or ".join(f"({e})" for e in exprs)


# --- rows --------------------------------------------------------------------------------------------
def cells(
    run: RunLike | None, mutant: Mutant, tier: str, columns: list[str], full: bool = False
) -> dict[str, str]:
    """One state per module (``STATES``)."""
    if run is None:
        return dict.fromkeys(columns, "unreachable")
    if run.status is not None and not run.status.get("applied", True):
        return dict.fromkeys(columns, "n/a")
    paths, _ = selection(mutant, tier, full)
    out = {}
    for col in columns:
        if not any(col == p or col.startswith(p.rstrip("/") + "/") for p in paths):
            out[col] = "unreachable"
            continue
        rows = [t for t in run.tests if t["module"] == col]
        if any(t["outcome"] == "failed" for t in rows):
            out[col] = "KILLED"
        elif any(t["outcome"] == "passed" for t in rows):
            out[col] = "survived"
        elif rows:
            out[col] = "skipped"
        else:
            out[col] = "not-run" if run.rc in (0, 1, 2) else "error"
    return out


def summarize(run: RunLike | None, mutant: Mutant, tier: str, columns: list[str], full: bool = False) -> dict:
    """The matrix row of one mutant on one tier (``run`` None: no test of the tier reaches it)."""
    row: dict = {"name": mutant.name, "summary": mutant.summary, "expect": list(mutant.expect)}
    row["cells"] = cells(run, mutant, tier, columns, full)
    if run is None:
        row.update(status="unreachable", reason=f"no test of the {tier} tier reaches it")
        return row
    row.update(rc=run.rc, wall_s=run.wall_s, command=" ".join(run.command[1:]))
    if run.status is not None and not run.status.get("applied", True):
        row.update(status="not_applicable", reason=run.status.get("reason", ""))
        return row
    kills = [t for t in run.tests if t["outcome"] == "failed"]
    if kills:
        wanted = mutant.expect
        found = [dict(f, module=t["module"], test=t["test"]) for t in kills for f in t["failures"]]
        good = [f for f in found if not wanted or any(verdicts.matches(f["verdict"], w) for w in wanted)]
        row["first_kill"] = (good or found)[0]
        row["verdicts"] = sorted({f["verdict"] for f in found})
        row["status"] = "killed" if good else "killed_unexpected"
        if not good:
            row["reason"] = f"killed as {', '.join(row['verdicts'])}, expected one of {', '.join(wanted)}"
    elif run.rc not in (0, 1, 2) or run.status is None:
        row.update(
            status="error", reason=f"pytest exit {run.rc}; no test failed", output_tail=run.output_tail
        )
    elif any(t["outcome"] == "passed" for t in run.tests):
        row["status"] = "survived_known_gap" if mutant.known_gap else "survived"
        if mutant.known_gap:
            row["reason"] = mutant.known_gap
    else:
        row.update(status="error", reason="no selected test ran (everything skipped or deselected)")
    return row


def baseline(run: RunLike) -> dict:
    """The baseline's entry: ``ok`` when the no-mutant run passed at least one test and failed none."""
    failed = [t for t in run.tests if t["outcome"] == "failed"]
    passed = [t for t in run.tests if t["outcome"] == "passed"]
    out = {
        "ok": run.rc == 0 and not failed and bool(passed),
        "rc": run.rc,
        "passed": len(passed),
        "failed": len(failed),
        "wall_s": run.wall_s,
        "command": " ".join(run.command[1:]),
        "failures": failed,
    }
    if not out["ok"]:
        out["output_tail"] = run.output_tail
    return out


def exit_status(baseline: dict | None, rows: list[dict]) -> int:
    """0: baseline passes and every reachable mutant is killed as expected or a known gap; 1: anything
    else that is wrong; 3: the only problem is a mutant not applicable to this release."""
    bad = {"survived", "killed_unexpected", "error"}
    if (baseline is not None and not baseline["ok"]) or any(r["status"] in bad for r in rows):
        return 1
    return 3 if any(r["status"] == "not_applicable" for r in rows) else 0


def worst(a: int, b: int) -> int:
    """Two tiers' exit statuses as one: 1 wins over 3, either over 0."""
    return b if a == 0 else (1 if 1 in (a, b) else a)


# --- printing ----------------------------------------------------------------------------------------
def render(tier: str, rows: list[dict], columns: list[str], baseline: dict | None) -> str:
    """The printed matrix (columns numbered, legend below), then each mutant's first kill with its
    counterexample."""
    width = max([len(r["name"]) for r in rows] + [8])
    lines = [f"kill matrix, {tier} tier"]
    if baseline is not None:
        lines.append(
            f"baseline (no mutant): {'PASS' if baseline['ok'] else 'FAIL'} "
            f"({baseline['passed']} passed, {baseline['failed']} failed, {baseline['wall_s']}s)"
        )
    lines.append(
        f"{'mutant':{width}}  {'result':18} {'s':>6}  "
        + " ".join(f"[{i + 1}]".ljust(8) for i in range(len(columns)))
    )
    for r in rows:
        cells = " ".join(SYMBOL.get(r["cells"][c], r["cells"][c]).ljust(8) for c in columns)
        lines.append(f"{r['name']:{width}}  {r['status']:18} {r.get('wall_s', ''):>6}  {cells}")
    lines.append("columns: " + "  ".join(f"[{i + 1}] {c}" for i, c in enumerate(columns)))
    lines.append(
        "cells: KILLED | survived | not-run (stopped by -x first) | - (not reachable on this tier) | n/a"
    )
    lines.append("")
    for r in rows:
        k = r.get("first_kill")
        if k:
            lines.append(f"{r['name']}: {k['verdict']} in {k['module']}::{k['test']}")
            lines.append(f"    {k.get('counterexample') or k['message'][:200]}")
        elif r.get("reason"):
            lines.append(f"{r['name']}: {r['status']}: {r['reason']}")
    return "\n".join(lines)
