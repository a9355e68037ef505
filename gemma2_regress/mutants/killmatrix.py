"""The kill matrix: run the suite once per planted bug (gemma2_regress.mutants) and tabulate who caught it.

    python -m gemma2_regress.mutants.killmatrix [NAME ...] [--tier cpu|gpu|auto] [--workers N] [--jobs J]

For each tier: one baseline run with no mutant over the union of the selections (it must pass, else
the matrix means nothing), then one pytest run per mutant over its fast selection with ``-x`` (a
mutant is killed as soon as one test fails) and the ``ci`` Hypothesis profile. Each run's JUnit XML
gives per-test outcomes; a failure's text gives the verdict (``mismatch``/``nan``/``crash:...``) and
Hypothesis's shrunk counterexample. Cells, one per mutant x test module:

    KILLED         a test of that module failed under the mutant (the first kill is quoted)
    survived       its selected tests ran and passed
    not-run        selected, but the run stopped first (``-x``: another module killed it already)
    unreachable    not reachable on this tier (the mutant's code or that module does not run here)
    n/a            the mutant does not apply to this Unsloth release (its anchor text is missing)

Exit status: 0 when the baseline passes and every mutant the tier can reach is killed (with the
expected verdict where the catalogue names one) or is a documented known gap of the suite
(``survived_known_gap``, printed as such, see docs/mutants.md); 1 otherwise; 2 for bad arguments, one line
on stderr before any run (an unknown mutant lists the known ones; an unknown tier, ``--jobs`` below 1,
``--workers`` below 0, ``--timeout-s`` not above 0, an ``--out`` that cannot be written, a ``--python``
that does not exist); 3 when the only problem is a mutant not applicable to this release.
The matrix is printed and written as JSON (atomically) to ``reports/killmatrix-<tier>.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gemma2_regress.argcheck import OneLineParser, bounded, unwritable
from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.builds import junit
from gemma2_regress.mutants import catalogue as mutants
from gemma2_regress.reference import verdicts

SCHEMA = "gemma2-regress/killmatrix/1"
ROOT = Path(__file__).resolve().parents[2]  # the repository: pytest runs there
MODULE_DIRS = ("tests/kernel", "tests/model", "tests/trainer")
CPU_PATHS = ("tests/kernel",)
MARKERS = {"cpu": "not gpu and not slow", "gpu": "gpu and not slow"}
STATES = ("KILLED", "survived", "not-run", "unreachable", "n/a", "skipped", "error")


@dataclasses.dataclass
class Run:
    """One pytest invocation and what came of it."""

    mutant: str | None
    rc: int
    wall_s: float
    tests: list[dict]
    status: dict | None
    output_tail: str
    command: list[str]


# --- parsing ---------------------------------------------------------------------------------------
def parse_junit(path: Path) -> list[dict]:
    """Per test (``gemma2_regress.builds.junit``): module path, test id, outcome (passed/failed/skipped),
    message; failures add ``failures`` (each distinct failure's verdict and shrunk counterexample)
    and the first's ``verdict`` and ``counterexample``. Plain dicts: they go into the JSON."""
    tests = []
    for t in junit.read(path):
        row = {"module": t.module, "test": t.name, "outcome": t.outcome, "message": t.message}
        if t.outcome == "failed":
            row["failures"] = [dataclasses.asdict(f) for f in t.failures]
            row["verdict"] = t.failures[0].verdict
            row["counterexample"] = t.failures[0].counterexample
        tests.append(row)
    return tests


# --- running ---------------------------------------------------------------------------------------
def modules() -> list[str]:
    """The matrix's columns: every test module under tests/kernel, tests/model and tests/trainer."""
    return sorted(str(p.relative_to(ROOT)) for d in MODULE_DIRS for p in (ROOT / d).glob("test_*.py"))


FULL = False  # --full: every test of the tier instead of each mutant's fast selection
NO_SHRINK = True  # default: quote the first failing example as found (--shrink for a minimal one)


def selection(mutant: mutants.Mutant, tier: str) -> tuple[tuple[str, ...], str]:
    """(paths, -k expression) of a mutant's fast selection on a tier (``--full``: the whole tier)."""
    if FULL:
        return (CPU_PATHS if tier == "cpu" else MODULE_DIRS), ""
    if tier == "cpu":
        return CPU_PATHS, mutant.cpu_select
    return mutant.gpu_paths, mutant.gpu_select


def union_selection(chosen: list[mutants.Mutant], tier: str) -> tuple[tuple[str, ...], str]:
    """What the baseline runs: every path and -k expression any chosen mutant uses on this tier."""
    paths: list[str] = []
    exprs: list[str] = []
    for m in chosen:
        if tier not in m.tiers:
            continue
        p, k = selection(m, tier)
        paths += [x for x in p if x not in paths]
        if not k:
            exprs = []
            break
        if k not in exprs:
            exprs.append(k)
    return tuple(paths), " or ".join(f"({e})" for e in exprs)


def pytest_command(
    python: str, paths: tuple[str, ...], tier: str, k: str, workers: int, junit: Path, mutant: str | None
) -> list[str]:
    cmd = [python, "-m", "pytest", *paths, "-m", MARKERS[tier], "-x", "-q", "-p", "no:cacheprovider"]
    cmd += ["--tb=native", "--junitxml", str(junit)]
    if workers > 0:  # 0: in-process (no -n, so it runs where pytest-xdist is absent too)
        cmd += ["-n", str(workers)]
    if k:
        cmd += ["-k", k]
    if mutant:
        cmd += ["--mutant", mutant] + (["--mutant-no-shrink"] if NO_SHRINK else [])
    return cmd


def run_pytest(
    python: str,
    paths: tuple[str, ...],
    tier: str,
    k: str,
    workers: int,
    mutant: str | None,
    timeout_s: float,
    scratch: Path,
    device: str | None = None,
) -> Run:
    """One pytest run (baseline when ``mutant`` is None); never raises for a failing suite.
    ``device``: the CUDA device index this run is pinned to (None: whatever is visible)."""
    tag = mutant or "baseline"
    junit, status_file = scratch / f"{tier}-{tag}.xml", scratch / f"{tier}-{tag}.status.json"
    cmd = pytest_command(python, paths, tier, k, workers, junit, mutant)
    env = dict(os.environ)
    env.pop(mutants.ENV, None)
    env.update(
        {
            "HYPOTHESIS_PROFILE": "ci",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
            mutants.STATUS_ENV: str(status_file),
            "GEMMA2_REGRESS_REPORT": str(scratch / f"{tier}-{tag}.summary.json"),
            "GEMMA2_REGRESS_COSTS": str(scratch / f"{tier}-{tag}.costs.json"),
        }
    )
    if tier == "cpu":
        env.setdefault("UNSLOTH_ALLOW_CPU", "1")
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        out = (
            (exc.stdout or b"").decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else exc.stdout or ""
        )
        out += f"\n[killmatrix] timed out after {timeout_s:.0f}s"
    wall = time.time() - t0
    status = None
    if status_file.exists():
        import json

        status = json.loads(status_file.read_text())
    return Run(mutant, rc, round(wall, 1), parse_junit(junit), status, out[-4000:], cmd)


# --- the matrix --------------------------------------------------------------------------------
def cells(run: Run | None, mutant: mutants.Mutant, tier: str, columns: list[str]) -> dict[str, str]:
    """One state per module (see the module docstring)."""
    if run is None:
        return dict.fromkeys(columns, "unreachable")
    if run.status is not None and not run.status.get("applied", True):
        return dict.fromkeys(columns, "n/a")
    paths, _ = selection(mutant, tier)
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


def summarize(run: Run | None, mutant: mutants.Mutant, tier: str, columns: list[str]) -> dict:
    """The matrix row of one mutant on one tier."""
    row: dict = {"name": mutant.name, "summary": mutant.summary, "expect": list(mutant.expect)}
    row["cells"] = cells(run, mutant, tier, columns)
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


SYMBOL = {"unreachable": "-", "not-run": "not-run"}


def render(tier: str, rows: list[dict], columns: list[str], baseline: dict | None) -> str:
    """The printed matrix (columns numbered, legend below), then each mutant's first kill with its
    shrunk counterexample."""
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


def exit_status(baseline: dict | None, rows: list[dict]) -> int:
    bad = {"survived", "killed_unexpected", "error"}
    if (baseline is not None and not baseline["ok"]) or any(r["status"] in bad for r in rows):
        return 1
    return 3 if any(r["status"] == "not_applicable" for r in rows) else 0


def detect_tier() -> str:
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def gpu_slots(tier: str) -> list[str | None]:
    """CUDA devices to spread the runs over, round robin: each GPU when several are visible and the
    caller has not pinned one (CUDA_VISIBLE_DEVICES); else [None] (leave visibility alone)."""
    if tier != "gpu" or "CUDA_VISIBLE_DEVICES" in os.environ:
        return [None]
    from gemma2_regress.gpu_check import cuda_device_count

    n = cuda_device_count()
    return [str(i) for i in range(n)] if n > 1 else [None]


def run_tier(tier: str, chosen: list[mutants.Mutant], args: argparse.Namespace) -> int:
    columns = modules()
    slots = gpu_slots(tier)
    scratch = Path(tempfile.mkdtemp(prefix=f"killmatrix-{tier}-"))
    t0 = time.time()
    python = args.python or sys.executable
    baseline = None

    def one(m: mutants.Mutant | None, device: str | None) -> tuple[mutants.Mutant | None, Run | None]:
        if m is None:  # the baseline: the union of the selections, no mutant
            paths, k = union_selection(chosen, tier)
            print(f"[killmatrix] {tier}: baseline (no mutant): {' '.join(paths)} -k {k!r}", flush=True)
            r = run_pytest(python, paths, tier, k, args.workers, None, args.timeout_s, scratch, device)
            print(f"[killmatrix] {tier}: baseline: rc={r.rc} {r.wall_s}s", flush=True)
            return None, r
        if tier not in m.tiers:
            return m, None
        paths, k = selection(m, tier)
        r = run_pytest(python, paths, tier, k, args.workers, m.name, args.timeout_s, scratch, device)
        where = f" (GPU {device})" if device is not None else ""
        print(f"[killmatrix] {tier}: {m.name}{where}: rc={r.rc} {r.wall_s}s", flush=True)
        return m, r

    # The baseline runs in the same pool, first: with --jobs > 1 it overlaps the mutant runs (its
    # verdict still decides whether the matrix means anything).
    todo: list[mutants.Mutant | None] = ([] if args.no_baseline else [None]) + list(chosen)
    devices = [slots[i % len(slots)] for i in range(len(todo))]  # round robin over the GPUs
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = list(pool.map(one, todo, devices))
    results = {m.name: r for m, r in done if m is not None}
    base_run = next((r for m, r in done if m is None), None)
    if base_run is not None:
        failed = [t for t in base_run.tests if t["outcome"] == "failed"]
        passed = [t for t in base_run.tests if t["outcome"] == "passed"]
        baseline = {
            "ok": base_run.rc == 0 and not failed and bool(passed),
            "rc": base_run.rc,
            "passed": len(passed),
            "failed": len(failed),
            "wall_s": base_run.wall_s,
            "command": " ".join(base_run.command[1:]),
            "failures": failed,
        }
        if not baseline["ok"]:
            baseline["output_tail"] = base_run.output_tail
    rows = [summarize(results.get(m.name), m, tier, columns) for m in chosen]
    status = exit_status(baseline, rows)
    from gemma2_regress.versions import versions

    payload = {
        "schema": SCHEMA,
        "tier": tier,
        "command": " ".join(["python -m gemma2_regress.mutants.killmatrix", *args.argv]),
        "workers": args.workers,
        "jobs": args.jobs,
        "shrink": not NO_SHRINK,
        "wall_s": round(time.time() - t0, 1),
        "versions": versions(),
        "columns": columns,
        "baseline": baseline,
        "mutants": rows,
        "exit_status": status,
    }
    out = Path(args.out.format(tier=tier))
    write_json_atomic(out, payload)
    print(render(tier, rows, columns, baseline))
    print(f"\n[killmatrix] {tier} tier: wall {payload['wall_s']}s; JSON: {out}; exit {status}")
    return status


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, every value checked (one-line error and ``SystemExit(2)`` on bad input,
    before anything runs: ``nox -s mutants`` calls this before it installs Unsloth)."""
    p = OneLineParser(prog="python -m gemma2_regress.mutants.killmatrix", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="mutants to run (default: all); see --list")
    p.add_argument(
        "--tier", default="auto", help="cpu, gpu, cpu,gpu or auto (gpu if CUDA is visible, else cpu)"
    )
    p.add_argument(
        "--workers",
        type=bounded(int, at_least=0),
        default=None,
        help="xdist workers per pytest run (default 0: in-process)",
    )
    p.add_argument(
        "--jobs", type=bounded(int, at_least=1), default=None, help="pytest runs at once (cpu: 2, gpu: 4)"
    )
    p.add_argument(
        "--timeout-s", type=bounded(float, above=0), default=1200.0, help="limit for one pytest run"
    )
    p.add_argument("--out", default="reports/killmatrix-{tier}.json", help="JSON path ({tier} is filled in)")
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the no-mutant run (the matrix then proves less)"
    )
    p.add_argument("--python", default=None, help="interpreter that runs pytest (default: this one)")
    p.add_argument("--full", action="store_true", help="run every test of the tier per mutant (slow)")
    shrink = p.add_mutually_exclusive_group()
    shrink.add_argument(
        "--shrink",
        dest="no_shrink",
        action="store_false",
        help="shrink each mutant's first counterexample (minimal, but each shrink step may recompile "
        "the kernel: ~45-50 min on 2 CPU cores instead of ~11)",
    )
    shrink.add_argument(
        "--no-shrink",
        dest="no_shrink",
        action="store_true",
        help="quote the first failing example as found (the default)",
    )
    p.set_defaults(no_shrink=True)
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = p.parse_args(argv)
    args.argv = argv
    unknown = [n for n in args.names if n not in mutants.CATALOGUE]
    if unknown:
        p.error(
            f"unknown mutant {', '.join(map(repr, unknown))}; known mutants: {', '.join(mutants.CATALOGUE)}"
        )
    tiers = [t.strip() for t in args.tier.split(",")]
    if args.tier != "auto" and (not all(t in mutants.TIERS for t in tiers) or len(set(tiers)) != len(tiers)):
        p.error(f"unknown tier {args.tier!r}; use cpu, gpu, cpu,gpu or auto")
    try:
        outs = {args.out.format(tier=t) for t in mutants.TIERS}
    except (KeyError, IndexError, ValueError) as exc:
        p.error(f"--out {args.out!r}: bad placeholder ({exc}); only {{tier}} is filled in")
    if len(tiers) > 1 and len(outs) == 1:
        p.error(f"--out {args.out!r}: two tiers would write one file; put {{tier}} in it")
    for out in sorted(outs):
        why = unwritable(out, folder=False)
        if why:
            p.error(f"--out {out}: {why}; pass a writable path")
    if args.python and not shutil.which(args.python):
        p.error(f"--python {args.python}: no such interpreter; pass the path of a python with pytest")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # bad arguments (one line printed) or --help
        return int(exc.code or 0)
    if args.list:
        for m in mutants.CATALOGUE.values():
            print(f"{m.name:26} [{','.join(m.tiers)}] {m.summary}")
        return 0
    chosen = [mutants.get(n) for n in args.names] if args.names else list(mutants.CATALOGUE.values())
    global FULL, NO_SHRINK
    FULL, NO_SHRINK = args.full, args.no_shrink
    tiers = [detect_tier()] if args.tier == "auto" else [t.strip() for t in args.tier.split(",")]
    worst = 0
    for tier in tiers:
        a = argparse.Namespace(**vars(args))
        a.workers = args.workers if args.workers is not None else 0
        a.jobs = args.jobs if args.jobs is not None else (2 if tier == "cpu" else 4)
        status = run_tier(tier, chosen, a)
        worst = status if worst == 0 else (1 if 1 in (worst, status) else worst)
    return worst


if __name__ == "__main__":
    sys.exit(main())
