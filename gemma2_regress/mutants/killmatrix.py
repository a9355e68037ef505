"""The kill matrix: run the suite once per planted bug (gemma2_regress.mutants) and tabulate who caught it.

    python -m gemma2_regress.mutants.killmatrix [NAME ...] [--tier cpu|gpu|auto] [--workers N] [--jobs J]

For each tier: one baseline run with no mutant over the union of the selections (it must pass, else
the matrix means nothing), then one pytest run per mutant over its fast selection with ``-x`` (a
mutant is killed as soon as one test fails) and the ``ci`` Hypothesis profile. Each run's summary JSON
(``builds.runner``) gives per-test outcomes, each failure's verdict (``mismatch``/``nan``/``crash:...``) and
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
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import gemma2_regress.mutants.catalogue as mutants
import gemma2_regress.mutants.matrix as matrix
from gemma2_regress.argcheck import OneLineParser, bounded, unwritable
from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.builds import runner
from gemma2_regress.builds.envs import Env
from gemma2_regress.progress import Progress

ROOT = Path(__file__).resolve().parents[2]  # the repository: pytest runs there
MARKERS = {"cpu": "not gpu and not slow", "gpu": "gpu and not slow"}


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


# --- reading ---------------------------------------------------------------------------------------
def rows(tests: list[runner.Outcome]) -> list[dict]:
    """Per test (``gemma2_regress.builds.runner``, from the run's summary JSON): module path, test id,
    outcome (passed/failed/skipped), message; failures add ``failures`` (each distinct failure's verdict,
    message and one-line counterexample) and the first's ``verdict`` and ``counterexample``. Plain
    dicts: they go into the JSON."""
    out = []
    for t in tests:
        row = {
            "module": t.module,
            "test": t.nodeid.split("::", 1)[-1],
            "outcome": t.plain,
            "message": t.message,
        }
        if t.failed:
            found = t.failures or (runner.Failure(runner.UNJUDGED),)
            row["failures"] = [
                {"verdict": f.verdict, "message": f.message, "counterexample": f.example} for f in found
            ]
            row["verdict"] = found[0].verdict
            row["counterexample"] = found[0].example
        out.append(row)
    return out


# --- running ---------------------------------------------------------------------------------------
def detect_tier() -> str:
    """``gpu`` where torch sees CUDA, else ``cpu`` (``--tier auto``)."""
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


def pytest_args(
    paths: tuple[str, ...], tier: str, k: str, workers: int, mutant: str | None, shrink: bool = False
) -> list[str]:
    """The selection of one run: the tier's marker expression, ``-x`` (one failing test kills the
    mutant), ``-k`` and the mutant (the plugin option ``--mutant``; unshrunk unless ``shrink``)."""
    args = [*paths, "-m", MARKERS[tier], "-x", "--tb=native"]
    if workers > 0:  # 0: in-process (no -n, so it runs where pytest-xdist is absent too)
        args += ["-n", str(workers)]
    if k:
        args += ["-k", k]
    if mutant:
        args += ["--mutant", mutant] + ([] if shrink else ["--mutant-no-shrink"])
    return args


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
    shrink: bool = False,
) -> Run:
    """One pytest run through the suite's runner (``builds.runner``; baseline when ``mutant`` is
    None); never raises for a failing suite. ``device``: the CUDA device index this run is pinned to
    (None: whatever is visible). A run stopped at ``timeout_s`` has ``rc`` 124."""
    step = scratch / f"{tier}-{mutant or 'baseline'}"
    status_file = step / "mutant-status.json"
    step.mkdir(parents=True, exist_ok=True)
    status_file.unlink(missing_ok=True)
    extra: dict[str, str | None] = {
        "HYPOTHESIS_PROFILE": "ci",
        mutants.STATUS_ENV: str(status_file),
        mutants.ENV: None,  # the mutant comes from --mutant only, never from the caller's environment
        # Unsloth's compile cache as the caller has it (unset: Unsloth's default), not one per run
        "UNSLOTH_COMPILE_LOCATION": os.environ.get("UNSLOTH_COMPILE_LOCATION"),
    }
    if tier == "cpu":
        extra["UNSLOTH_ALLOW_CPU"] = os.environ.get("UNSLOTH_ALLOW_CPU", "1")
    sel = runner.Selection(pytest_args(paths, tier, k, workers, mutant, shrink), timeout_s=timeout_s)
    res = runner.run(Env(python), sel, step, cwd=ROOT, extra_env=extra, gpu=device)
    log = Path(res.log)
    out = log.read_text(errors="replace") if log.exists() else ""
    rc = 124 if res.timed_out else res.exit_code
    if res.timed_out:
        out += f"\n[killmatrix] timed out after {timeout_s:.0f}s"
    status = json.loads(status_file.read_text()) if status_file.exists() else None
    return Run(mutant, rc, round(res.test_s, 1), rows(res.tests), status, out[-4000:], res.command)


# --- one tier --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Options:
    """One tier's settings, from the command line (``options``; each explained in ``parse_args``)."""

    workers: int = 0
    jobs: int = 2
    timeout_s: float = 1200.0
    out: str = "reports/killmatrix-{tier}.json"
    python: str = sys.executable
    baseline: bool = True
    full: bool = False
    shrink: bool = False
    argv: tuple[str, ...] = ()


def options(args: argparse.Namespace, tier: str) -> Options:
    """The parsed command line as one tier's :class:`Options` (``--jobs`` defaults per tier)."""
    return Options(
        workers=args.workers if args.workers is not None else 0,
        jobs=args.jobs if args.jobs is not None else (2 if tier == "cpu" else 4),
        timeout_s=args.timeout_s,
        out=args.out,
        python=args.python or sys.executable,
        baseline=not args.no_baseline,
        full=args.full,
        shrink=not args.no_shrink,
        argv=tuple(args.argv),
    )


def run_tier(tier: str, chosen: list[mutants.Mutant], opts: Options) -> int:
    """The baseline and one run per chosen mutant on one tier; prints the matrix, writes its JSON
    (atomically) and returns the exit status."""
    columns = matrix.modules(ROOT)
    slots = gpu_slots(tier)
    scratch = Path(tempfile.mkdtemp(prefix=f"killmatrix-{tier}-"))
    t0 = time.time()

    def one(m: mutants.Mutant | None, device: str | None) -> tuple[mutants.Mutant | None, Run | None]:
        if m is None:  # the baseline: the union of the selections, no mutant
            paths, k = matrix.union_selection(chosen, tier, opts.full)
            progress.line(f"[killmatrix] {tier}: baseline (no mutant): {' '.join(paths)} -k {k!r}")
            r = run_pytest(
                opts.python, paths, tier, k, opts.workers, None, opts.timeout_s, scratch, device, opts.shrink
            )
            landed(
                f"baseline: {'passed' if r.rc == 0 else 'FAILED (the matrix proves less)'}, rc={r.rc} {r.wall_s}s"
            )
            return None, r
        if tier not in m.tiers:
            return m, None
        paths, k = matrix.selection(m, tier, opts.full)
        r = run_pytest(
            opts.python, paths, tier, k, opts.workers, m.name, opts.timeout_s, scratch, device, opts.shrink
        )
        where = f" (GPU {device})" if device is not None else ""
        caught = (
            "a test failed: killed unless the baseline fails" if r.rc != 0 else "every test passed: survived"
        )
        landed(f"{m.name}{where}: {caught}, rc={r.rc} {r.wall_s}s")
        return m, r

    # The baseline runs in the same pool, first: with --jobs > 1 it overlaps the mutant runs (its
    # verdict still decides whether the matrix means anything).
    todo: list[mutants.Mutant | None] = ([None] if opts.baseline else []) + [
        m for m in chosen if tier in m.tiers
    ]
    todo += [m for m in chosen if tier not in m.tiers]  # not reachable on this tier: no run
    devices = [slots[i % len(slots)] for i in range(len(todo))]  # round robin over the GPUs
    runs = sum(m is None or tier in m.tiers for m in todo)
    progress = Progress(f"killmatrix {tier}", runs)
    finished = [0]
    lock = threading.Lock()

    def landed(text: str) -> None:
        """One run's verdict as it lands, with runs done / total and the time left."""
        with lock:
            finished[0] += 1
            progress.line(f"[killmatrix] {tier}: {finished[0]}/{runs} {text}")
            progress.update(finished[0])

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
        done = list(pool.map(one, todo, devices))
    progress.clear()
    results = {m.name: r for m, r in done if m is not None}
    base_run = next((r for m, r in done if m is None), None)
    baseline = matrix.baseline(base_run) if base_run is not None else None
    rows = [matrix.summarize(results.get(m.name), m, tier, columns, opts.full) for m in chosen]
    status = matrix.exit_status(baseline, rows)
    from gemma2_regress.versions import versions

    payload = {
        "schema": matrix.SCHEMA,
        "tier": tier,
        "command": " ".join(["python -m gemma2_regress.mutants.killmatrix", *opts.argv]),
        "workers": opts.workers,
        "jobs": opts.jobs,
        "shrink": opts.shrink,
        "wall_s": round(time.time() - t0, 1),
        "versions": versions(),
        "columns": columns,
        "baseline": baseline,
        "mutants": rows,
        "exit_status": status,
    }
    out = Path(opts.out.format(tier=tier))
    write_json_atomic(out, payload)
    print(matrix.render(tier, rows, columns, baseline))
    print(f"\n[killmatrix] {tier} tier: wall {payload['wall_s']}s; JSON: {out}; exit {status}")
    return status


# --- the command line ------------------------------------------------------------------------------


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
        "the kernel: several times slower, docs/mutants.md)",
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
    tiers = [detect_tier()] if args.tier == "auto" else [t.strip() for t in args.tier.split(",")]
    worst = 0
    for tier in tiers:
        worst = matrix.worst(worst, run_tier(tier, chosen, options(args, tier)))
    return worst


if __name__ == "__main__":
    sys.exit(main())
