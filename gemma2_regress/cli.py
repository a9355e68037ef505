"""The ``gemma2-regress`` command: ``test``, ``bisect``, ``gate``, ``nightly``, ``report`` and ``perf``
(``gemma2-regress <cmd> --help``).

Everything after ``--`` is handed to pytest as the selection (node ids, ``-k``, ``-m``, ``--hypothesis-*``).
Exit codes: bisect 0 = boundary found, 3 = only a range (untestable builds inside it), 2 = bad input
or range; ``bisect --script`` (for ``git bisect run``) 0 good, 1 bad, 125 skip; gate 0 pass, 1 fail.
Bad input (an unknown version, no network, a wrong-way range, a missing wheel or bundle, a bad option
value) is checked before anything is built or run: one line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.version import InvalidVersion, Version

from gemma2_regress.argcheck import OneLineParser, bounded, choices, unwritable
from gemma2_regress.builds import bisect, envs, install, runner, sources
from gemma2_regress.gpu_check import visible_gpus
from gemma2_regress.perf.stats import BARE_THRESHOLD, MIN_EFFECT

EPILOG_BISECT = """examples:
  gemma2-regress bisect --good 2026.10.1 --bad 2026.10.9 -- tests/kernel/test_slow_kernel.py -k small_windows
  gemma2-regress bisect --good 2026-09-01 --bad 2026-10-30 --signature crash:TypeError -- tests/kernel
  gemma2-regress bisect --find-fix --bad 2026.9.12 --good 2026.9.14 --torch 2.13.0 -- tests/kernel -k small_windows
  gemma2-regress bisect --repo ~/unsloth --good v2026.10.1 --bad main -- tests/kernel      (nightlies: commits)
  GEMMA2_REGRESS_ROOT=~/gemma2-regress git bisect run gemma2-regress bisect --script --repo . -- tests/kernel  (in a clone)
The same command again resumes from its saved state (--fresh starts over).
"""


def _gpu_spec(text: str) -> str:
    """``--gpus``: 0, 'auto', a count, or a list of device indices / GPU-/MIG- UUIDs."""
    if text in ("0", "auto") or text.isdigit():
        return text
    items = [s.strip() for s in text.split(",")]
    if all(i.isdigit() or i.startswith(("GPU-", "MIG-")) for i in items) and len(set(items)) == len(items):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: pass a count, 'auto' or a list of distinct indices like 0,1")


def _signature(text: str) -> str:
    """``--signature``: what counts as bad (``verdicts.matches``); a typo would make every build good."""
    if re.fullmatch(r"bad|mismatch|nan|crash(:\S+)?", text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: use bad, mismatch, nan, crash or crash:<Type>[@<file>[:<function>]]"
    )


def _torch_version(text: str) -> str:
    try:
        Version(text)
    except InvalidVersion:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch version (e.g. 2.13.0 or 2.13.0+cpu)"
        ) from None
    return text


def _perf_args(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {exc}; quote it as one string, e.g. --perf-args='--smoke'"
        ) from None


def _repo_and_tiers(p: argparse.ArgumentParser) -> None:
    """``--repo`` and ``--tiers``, as gate and nightly take them (``_two_builds`` reads both)."""
    p.add_argument("--repo", help="Unsloth checkout for a git-ref candidate (nightlies: --candidate main)")
    p.add_argument(
        "--tiers",
        type=choices(("cpu", "gpu"), "tier"),
        help="comma list of cpu,gpu (default: cpu, plus gpu when a GPU is visible)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", default=str(envs.CACHE_ROOT), help="environment cache folder (default %(default)s)"
    )
    p.add_argument(
        "--cache-gb",
        type=bounded(float, above=0),
        default=envs.DEFAULT_LIMIT_GB,
        help="evict least recently used environments beyond this size (default %(default)s GB)",
    )
    p.add_argument(
        "--installer",
        choices=("auto", "uv", "pip"),
        default="auto",
        help="uv (fast, hard-links from its cache, resolves as of each release's date) or pip (default: uv if installed)",
    )
    p.add_argument(
        "--torch",
        type=_torch_version,
        help="use this torch even where a release caps torch lower (e.g. 2.13.0, a CPU build here)",
    )
    p.add_argument(
        "--timeout",
        type=bounded(float, above=0),
        default=3600.0,
        help="seconds per pytest run before the candidate counts as skip",
    )


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="gemma2-regress", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser(
        "bisect",
        help="find the first bad (or, with --find-fix, first good) Unsloth build",
        description=bisect.__doc__,
        epilog=EPILOG_BISECT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument(
        "--good", help="a good build: version, YYYY-MM-DD (newest release up to that day) or git ref"
    )
    b.add_argument("--bad", help="a bad build (same forms)")
    b.add_argument(
        "--find-fix",
        action="store_true",
        help="search for the first good build after a bad one (--bad older)",
    )
    b.add_argument(
        "--signature",
        type=_signature,
        help="what counts as bad: a verdict pattern (crash, crash:TypeError, mismatch, nan; default any failure)",
    )
    b.add_argument(
        "--wheelhouse",
        help="bisect the unsloth-*.whl builds in this folder (installed --no-deps over this interpreter)",
    )
    b.add_argument("--repo", help="bisect commits of this Unsloth checkout (laid as source over --base)")
    b.add_argument(
        "--base",
        default="installed",
        help="environment for --repo / --script: 'installed' (this interpreter, default) or a release version",
    )
    b.add_argument(
        "--script",
        action="store_true",
        help="test the --repo working tree once; exit 0 good, 1 bad, 125 skip",
    )
    b.add_argument(
        "--gpus",
        type=_gpu_spec,
        default="0",
        help="test k candidates at once, one per GPU: a count, 'auto' (all visible) or a list like 0,1,2 (default 0: one at a time)",
    )
    b.add_argument("--workdir", help="state and reports (default reports/bisect/<range>-<hash>)")
    b.add_argument("--fresh", action="store_true", help="discard saved state and start over")
    b.add_argument("--json", action="store_true", help="print the result JSON at the end")
    _common(b)
    b.add_argument("pytest_args", nargs="*", help="after --: the pytest selection")
    g = sub.add_parser(
        "gate",
        help="fail a candidate on tests that pass on the baseline and fail on it",
        description=_gate_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument(
        "--candidate", required=True, help="version, wheel file, git ref (with --repo) or 'installed'"
    )
    g.add_argument("--baseline", default="latest", help="version (default latest release) or 'installed'")
    _repo_and_tiers(g)
    g.add_argument(
        "--perf",
        dest="perf",
        action="store_true",
        default=None,
        help="run the perf comparison (default on a GPU)",
    )
    g.add_argument("--no-perf", dest="perf", action="store_false")
    g.add_argument(
        "--perf-min-effect",
        type=bounded(float, at_least=1),
        default=MIN_EFFECT,
        help="perf: fail when the bootstrap interval of the time ratio lies above this "
        "(gemma2_regress/perf/stats.py; default %(default)s)",
    )
    g.add_argument(
        "--perf-threshold",
        type=bounded(float, above=1),
        default=BARE_THRESHOLD,
        help="perf, for runs without per-repeat times: fail when the candidate is this many times slower "
        "(default %(default)s)",
    )
    g.add_argument(
        "--out", default="reports/gate", help="gate.json, gate-junit.xml and logs (default %(default)s)"
    )
    g.add_argument(
        "--perf-args",
        type=_perf_args,
        default="",
        help="extra arguments for `python -m gemma2_regress.perf run`, as one string with = (--perf-args='--smoke')",
    )
    _common(g)
    g.add_argument("pytest_args", nargs="*", help="after --: pytest arguments (default: tests)")
    n = sub.add_parser(
        "nightly",
        help="gate the newest build against the last good one, rerun its failures, bisect the stable ones",
        description=_nightly_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    n.add_argument("--candidate", default="latest", help="the build under test (default: latest release)")
    n.add_argument("--baseline", required=True, help="the last good build: a release, a wheel, a site folder")
    n.add_argument(
        "--reruns", type=bounded(int, at_least=1), default=3, help="reruns of each failing test (default 3)"
    )
    _repo_and_tiers(n)
    n.add_argument(
        "--out", default="reports/nightly", help="nightly.json, nightly.md and each step's reports"
    )
    _common(n)
    n.add_argument("pytest_args", nargs="*", help="after --: pytest arguments (default: tests)")
    r = sub.add_parser(
        "report",
        help="the worst-ratio table of one run's summary JSON, or of several shards merged into one",
        description="Read summary.json files a run wrote (one, or one per shard of a run), print the "
        "worst error ratio per property and target (1.0 = at the tolerance bound), and optionally write "
        "the shards merged into one summary. Exit 1 when a test failed in any of them.",
    )
    r.add_argument("summaries", nargs="+", help="summary.json files (reports/<tier>/summary.json)")
    r.add_argument("--markdown", action="store_true", help="a Markdown table (for a CI job summary)")
    r.add_argument("--out", help="write the merged summary JSON here")
    sub.add_parser(
        "perf", add_help=False, help="benchmark Unsloth's slow softcapping path (gemma2-regress perf --help)"
    )
    sub.add_parser(
        "test",
        add_help=False,
        help="run the suite against the Unsloth importable here (gemma2-regress test --help)",
    )
    return p


EPILOG_TEST = """examples:
  gemma2-regress test                                   the cpu tier: everything that needs no GPU
  gemma2-regress test --tier gpu                        the GPU tier (fails without a usable GPU)
  gemma2-regress test tests/kernel -k window -x         pytest arguments; test paths are the suite's
  cd ~/unsloth && pip install -e . --no-deps && gemma2-regress test    (the suite against a working tree)
Reports: <--reports>/<tier>/summary.json, costs.json, junit.xml. Exit status: pytest's.
"""


def test_parser() -> argparse.ArgumentParser:
    """``gemma2-regress test``'s options; every argument it does not know is pytest's."""
    from gemma2_regress import suite

    p = OneLineParser(
        prog="gemma2-regress test",
        description="Run the suite's tests with this interpreter against whatever Unsloth it imports: the "
        "suite of this checkout, or the copy the installed wheel carries (" + suite.ROOT_ENV + " picks "
        "another). Arguments it does not know go to pytest.",
        epilog=EPILOG_TEST,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tier", choices=suite.TIERS, default="cpu", help="which tier (default %(default)s)")
    p.add_argument("--reports", default="reports", help="folder for the run's reports (default %(default)s)")
    return p


def cmd_test(argv: list[str]) -> int:
    from gemma2_regress import gpu_check, suite

    args, pytest_args = test_parser().parse_known_args(argv)
    pytest_args = [a for a in pytest_args if a != "--"]
    prog = "gemma2-regress test"
    reports = Path(args.reports).resolve()
    try:
        _check_paths(reports=str(reports))
        root = suite.root()
        gpus = 0
        if args.tier == "gpu":  # asked for by name: no usable GPU is a failure, not a skip
            problem = gpu_check.gpu_tier_problem(sys.executable)
            if problem:
                print(f"{prog}: error: the gpu tier cannot run here: {problem}", file=sys.stderr)
                return 1
            gpus = gpu_check.cuda_device_count(sys.executable)
            pytest_args = ["--require-gpu", *pytest_args]
            gib, cores = gpu_check.gpu_memory_gib(), gpu_check.cpu_cores()
            per_gpu, why = suite.workers_per_gpu(gpus, gib, cores)
            print(f"{prog}: {per_gpu} xdist worker(s) per GPU x {gpus} GPU(s) ({why})", flush=True)
        else:
            gib, cores = None, gpu_check.cpu_cores()
        argv_, defaults = suite.pytest_command(
            args.tier,
            pytest_args,
            suite=root,
            reports=reports,
            python=sys.executable,
            gpus=gpus,
            gpu_gib=gib,
            cores=cores,
        )
    except (suite.SuiteError, bisect.BisectError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return bisect.EXIT_ERROR
    env = {**os.environ, **defaults}
    print(f"{prog}: {args.tier} tier of {root}, reports in {reports / args.tier}", flush=True)
    return subprocess.run(argv_, cwd=root, env=env).returncode


def _nightly_doc() -> str:
    from gemma2_regress.builds import nightly

    return nightly.__doc__ or ""


def cmd_nightly(args: argparse.Namespace) -> int:
    from gemma2_regress.builds import nightly

    common = _two_builds(args)
    return int(nightly.nightly(args.candidate, args.baseline, reruns=args.reruns, **common)["exit"])


def cmd_report(args: argparse.Namespace) -> int:
    from gemma2_regress.atomic import write_json_atomic
    from gemma2_regress.plugins import summary

    try:
        why = unwritable(args.out, folder=False) if args.out else None
        if why:
            raise summary.SummaryError(f"--out {args.out}: {why}")
        merged = summary.merge([summary.load(p) for p in args.summaries])
    except summary.SummaryError as exc:
        print(f"gemma2-regress report: error: {exc}", file=sys.stderr)
        return bisect.EXIT_ERROR
    rows = merged["properties"]
    lines = summary.markdown_lines(rows) if args.markdown else summary.table_lines(rows)
    failed = sorted(n for n, t in merged["tests"].items() if t.get("outcome") in ("failed", "error"))
    outcomes: dict[str, int] = {}
    for t in merged["tests"].values():
        outcomes[t.get("outcome", "?")] = outcomes.get(t.get("outcome", "?"), 0) + 1
    counts = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
    print("\n".join(lines))
    print(
        f"\n{len(args.summaries)} summary file(s): {counts}"
        + (f"; failed: {', '.join(failed[:10])}" if failed else "")
    )
    if args.out:
        write_json_atomic(args.out, merged)
        print(f"merged summary JSON: {args.out}")
    return 1 if failed else 0


def _gate_doc() -> str:
    from gemma2_regress.builds import gate

    return gate.__doc__ or ""


def _gpus(spec: str, visible: int | None = None) -> list[str]:
    """The devices of a ``--gpus`` spec (checked by ``_gpu_spec``); more than are visible is an error."""
    if spec in ("0", ""):
        return []
    n = visible_gpus() if visible is None else visible
    if spec == "auto":
        return [str(i) for i in range(n or 0)]
    wanted = [str(i) for i in range(int(spec))] if spec.isdigit() else [s.strip() for s in spec.split(",")]
    indices = [int(w) for w in wanted if w.isdigit()]
    if n == 0:
        raise bisect.BisectError(
            f"--gpus {spec}: no GPU is visible here; leave --gpus out (one candidate at a time)"
        )
    if n is not None and indices and max(indices) >= n:
        raise bisect.BisectError(
            f"--gpus {spec}: {n} GPU(s) visible here; pass --gpus auto, a count up to {n}, "
            "or leave --gpus out (one candidate at a time)"
        )
    return wanted


def _check_paths(**paths: str | None) -> None:
    """Folders the command will write (``--cache``, ``--workdir``, ``--out``): writable, checked up front."""
    for flag, path in paths.items():
        why = unwritable(path, folder=True) if path else None
        if why:
            raise bisect.BisectError(f"--{flag.replace('_', '-')} {path}: {why}; pass a writable folder")


def _check_installer(installer: str) -> None:
    if installer == "uv" and envs.uv_binary() is None:
        raise bisect.BisectError(
            "--installer uv: uv is not installed; `pip install uv` or pass --installer pip"
        )


def _base_spec(spec: str, args: argparse.Namespace) -> sources.Spec:
    """``--base``: 'installed' (this interpreter, which need not hold Unsloth: the checkout supplies
    it) or a release, checked against PyPI's list (a version or a date); nothing is built."""
    if spec == "installed":
        return sources.INSTALLED
    return sources.Spec.release(sources.PyPIReleases(torch=args.torch, installer=args.installer).pick(spec))


def _base_env(spec: sources.Spec, cache: envs.EnvCache, args: argparse.Namespace) -> envs.Env:
    return sources.environment(spec, cache, torch=args.torch, installer=args.installer)[0]


def _selection(args: argparse.Namespace) -> runner.Selection:
    if not args.pytest_args:
        raise bisect.BisectError(
            "no test selection: put pytest arguments after --, e.g. -- tests/kernel -k small_windows"
        )
    return runner.Selection(list(args.pytest_args), args.signature, args.timeout, known_issues=False)


def cmd_bisect(args: argparse.Namespace) -> int:
    # Everything is checked before anything is built, run or written (the range needs PyPI's list).
    sel = _selection(args)
    _check_paths(cache=args.cache, workdir=args.workdir)
    _check_installer(args.installer)
    gpus = _gpus(args.gpus)
    if args.repo and args.wheelhouse:
        raise bisect.BisectError("--repo and --wheelhouse are two sources; pass one of them")
    cache = envs.EnvCache(args.cache, int(args.cache_gb * 2**30))
    cwd = Path.cwd()
    if args.script:
        if not args.repo:
            raise bisect.BisectError(
                "--script tests a checkout's working tree: pass --repo PATH (e.g. --repo .)"
            )
        if not Path(args.repo).is_dir():
            raise bisect.BisectError(f"--repo {args.repo}: no such folder; pass an Unsloth checkout")
        base = _base_env(_base_spec(args.base, args), cache, args)
        env = envs.Env(base.python, [str(Path(args.repo).resolve()), *base.pythonpath])
        # The suite's checkout: `git bisect run` starts this in Unsloth's checkout.
        root = Path(os.environ.get("GEMMA2_REGRESS_ROOT", cwd))
        wd = Path(args.workdir) if args.workdir else root / "reports" / "bisect" / "script"
        res = runner.run(env, sel, wd, cwd=root)
        code = bisect.script_exit(res.status, args.find_fix)
        print(f"gemma2-regress: {res.status} ({res.signature}) {res.reason} -> exit {code}", flush=True)
        return code
    if not (args.good and args.bad):
        raise bisect.BisectError("pass both --good and --bad (versions, YYYY-MM-DD dates or git refs)")
    if args.repo:
        base_spec = _base_spec(args.base, args)  # checked now, built with the first commit
        source: sources.Source = sources.GitCheckout(
            args.repo,
            *((args.bad, args.good) if args.find_fix else (args.good, args.bad)),
            base=lambda: _base_env(base_spec, cache, args),
            base_key=sources.base_key(base_spec, args.torch, args.installer),
        )
    elif args.wheelhouse:
        source = sources.Wheelhouse(args.wheelhouse, installer=args.installer)
    else:
        source = sources.PyPIReleases(torch=args.torch, installer=args.installer)
    workdir = (
        Path(args.workdir)
        if args.workdir
        else bisect.workdir_for(source, args.good, args.bad, sel, args.find_fix, Path("reports/bisect"))
    )
    b = bisect.Bisect(
        source,
        args.good,
        args.bad,
        sel,
        cache,
        workdir,
        cwd=cwd,
        find_fix=args.find_fix,
        gpus=gpus,
    )
    b.range()  # unknown builds, no network and a wrong-way range fail here, before --fresh deletes anything
    if args.fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    res = b.run()
    print(
        f"\n{res['answer']}\nsteps: {res['test_runs']} test runs (bound {res['bound']}) in {res['wall_s']:.0f} s\n"
        f"compare: {res['compare']}\nresult: {workdir / 'result.json'} and {workdir / 'result.md'} (issue text)"
    )
    if res["falsifying_example"]:
        print("minimal failing example:\n" + res["falsifying_example"])
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "issue_text"}, indent=2))
    return res["exit"]


def cmd_gate(args: argparse.Namespace) -> int:
    from gemma2_regress.builds import gate

    if args.perf_args:
        _check_perf_args(args.perf_args)
    common = _two_builds(args)
    res = gate.gate(
        args.candidate,
        args.baseline,
        perf=args.perf,
        perf_threshold=args.perf_threshold,
        perf_min_effect=args.perf_min_effect,
        perf_args=args.perf_args,
        **common,
    )
    return 0 if res["pass"] else 1


def _two_builds(args: argparse.Namespace) -> dict:
    """What gate and nightly share: their folders and installer checked now, the environment cache,
    and the run's settings as keyword arguments of ``gate.gate`` / ``nightly.nightly``."""
    _check_paths(cache=args.cache, out=args.out)
    _check_installer(args.installer)
    return {
        "out": Path(args.out),
        "cache": envs.EnvCache(args.cache, int(args.cache_gb * 2**30)),
        "cwd": Path.cwd(),
        "pytest_args": list(args.pytest_args) or ["tests"],
        "tiers": args.tiers,
        "repo": args.repo,
        "torch": args.torch,
        "installer": args.installer,
        "timeout_s": args.timeout,
    }


def _check_perf_args(argv: list[str]) -> None:
    """``--perf-args`` are parsed as ``perf run`` would, now, not after both tiers have run."""
    try:
        from gemma2_regress.perf.cli import check_run_args
    except ImportError:  # no torch in this interpreter: the gate's perf step says "not run" anyway
        return
    try:
        check_run_args(argv)
    except ValueError as exc:
        raise bisect.BisectError(f"--perf-args: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["perf"]:  # its own command line: run | plot | compare (docs/perf.md)
        from gemma2_regress.perf.cli import main as perf_main

        return perf_main(argv[1:])
    if argv[:1] == ["test"]:  # its own command line: unknown arguments are pytest's
        return cmd_test(argv[1:])
    args = parser().parse_args(argv)
    try:
        commands = {"bisect": cmd_bisect, "gate": cmd_gate, "nightly": cmd_nightly, "report": cmd_report}
        return commands[args.cmd](args)
    except (bisect.BisectError, envs.BuildError, install.InstallError) as exc:
        print(f"gemma2-regress {args.cmd}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return bisect.EXIT_ERROR
    except KeyboardInterrupt:
        again = "the same command resumes from the saved state" if args.cmd == "bisect" else "run it again"
        print(f"\ninterrupted; {again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
