"""Unsloth on an air-gapped GPU runner: the compile cache and bounded runs over offline bundles.

A GPU runner's image often has torch and transformers but no Unsloth and no package index; the
packages come as a bundle (``builds.bundle``). The command ``python -m gemma2_regress.builds.offline``:

``build``   makes a bundle from a pins file (where PyPI is reachable);
``tier``    unpacks the bundle, restores the compile cache carried beside it, runs ``nox -s gpu --no-venv``
            within a time bound (SIGINT at the bound, so pytest still writes its reports), prints the
            counts, and can pack the compile cache into parts to carry to the next runner (the whole
            inductor folder, or only torch's cache artifacts: ``builds.portable_cache``);
``gate``    the release gate (``gemma2-regress gate``) between two bundles, GPU tier only;
``releases`` old Unsloth releases, each over its own stack of bundles (``gpu/old-releases.txt``), through
            the window selections on CUDA, each bounded, several at once, a verdict each
            (``builds.old_releases``);
``unpack``  just the unpacking (prints the site folder).

Bad input is one line on stderr and exit 2 before anything is unpacked or run. ``gpu/*.sh`` call these.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from gemma2_regress import gpu_check
from gemma2_regress.argcheck import OneLineParser, bounded
from gemma2_regress.builds import old_releases, portable_cache, runner
from gemma2_regress.builds.bundle import BUNDLE, PINS, OfflineError, build, extract, unpack
from gemma2_regress.builds.parts import Parts, joined
from gemma2_regress.kernel.selections import KERNEL_TESTS, UNSLOTH_MASKS
from gemma2_regress.plugins.summary import whole_tier_passed


def restore_cache(cache: Path, parts: Sequence[Path]) -> str:
    """Unpack packed cache parts into ``cache`` if it is absent (beside it, then renamed)."""
    if cache.exists() or not parts:
        return f"inductor cache: {cache} ({_size(cache)})"
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{cache.name}.new.", dir=cache.parent))
    try:
        with joined(parts) as stream, tarfile.open(fileobj=stream, mode="r|gz") as tf:
            extract(tf, tmp)
        tmp.rename(cache)
    except (tarfile.TarError, OSError, EOFError):
        shutil.rmtree(tmp, ignore_errors=True)
        return f"inductor cache: {parts[0].parent}/{parts[0].name[:-3]}* did not unpack; starting cold"
    return f"inductor cache: {cache} restored from {len(parts)} part(s) ({_size(cache)})"


def pack_cache(cache: Path, out: Path) -> str:
    """Pack the whole ``cache`` folder into ``out/inductor.tgz.aa, .ab, ...`` (PART bytes each)."""
    with Parts(out / "inductor.tgz.") as sink, tarfile.open(fileobj=sink, mode="w|gz") as tf:
        for path in sorted(cache.iterdir()):
            tf.add(path, arcname=path.name)
    total = sum(p.stat().st_size for p in sink.paths)
    return f"cache packed (full): {_size(cache)} -> {total} bytes in {len(sink.paths)} part(s)"


def portable(verb: str, args: Sequence[str], env: dict[str, str]) -> str:
    """``portable_cache pack|load`` in a child process of the tier's environment (it imports torch); its line."""
    argv = [sys.executable, "-m", "gemma2_regress.builds.portable_cache", verb, *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[-1] if lines else f"portable compile cache: {verb} printed nothing (exit {done.returncode})"


def pack_args(artifacts: Path, out: Path) -> list[str]:
    """``portable_cache pack``'s arguments for the artifacts of a run whose reports are under ``out``:
    ``--partial`` unless its ``summary.json`` says it ran a whole tier and passed, so that only the pack of
    such a run carries the record that makes the loading runner's tier start warm."""
    partial = [] if whole_tier_passed(out / "summary.json") else ["--partial"]
    return [str(artifacts), str(out / portable_cache.PREFIX), *partial]


def _size(path: Path) -> str:
    if not path.exists():
        return "empty"
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{total / 2**20:.0f} MiB"


def bounded_run(
    argv: Sequence[str],
    seconds: float,
    log: Path,
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    grace: float = 60.0,
) -> int:
    """Run ``argv`` (in ``cwd``, default this folder) with output to ``log``; at ``seconds`` send SIGINT
    (pytest then writes its reports), ``grace`` seconds later kill. Returns the exit status (130-ish on
    interruption, as the process reports it)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                return proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait()


def tier(args: argparse.Namespace) -> int:
    """The GPU tier over the bundle, bounded; reports and the log under ``args.out``."""
    site = unpack(args.bundle, args.root)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", Path.cwd() / ".cache" / "inductor"))
    print(restore_cache(cache, sorted(args.bundle.parent.glob("inductor.tgz.*"))), flush=True)
    artifacts = cache.parent / "compile-artifacts"  # this run's, for --pack-cache portable
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(Path.cwd())]),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "GEMMA2_REGRESS_REPORT": str(out / "summary.json"),
        "GEMMA2_REGRESS_COSTS": str(out / "costs.json"),
    }
    env.setdefault("GEMMA2_REGRESS_REQUIRE_GPU", "1")  # a GPU runner without a GPU fails, never skips
    carried = sorted(args.bundle.parent.glob(portable_cache.PREFIX + "*"))
    if carried:
        print(portable("load", [str(p) for p in carried], env), flush=True)
    if args.pack_cache == "portable":
        shutil.rmtree(artifacts, ignore_errors=True)
        env[portable_cache.ENV] = str(artifacts)
    probe = "import sys,torch,transformers;print(sys.version.split()[0],torch.__version__,transformers.__version__,"
    probe += "torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    print(((done.stdout or done.stderr).strip().splitlines() or ["python: no answer"])[-1], flush=True)
    argv = nox_argv(out, args.pytest_args)
    start = time.time()
    rc = bounded_run(argv, args.seconds, out / "tier.log", env)
    print(f"tier rc={rc} wall={time.time() - start:.0f}s")
    print("\n".join((out / "tier.log").read_text(errors="replace").splitlines()[-60:]))
    print(counts(out / "summary.json"))
    if args.pack_cache == "full" and cache.exists():
        print(pack_cache(cache, out))
    elif args.pack_cache == "portable":
        print(portable("pack", pack_args(artifacts, out), env))
    return rc


def nox_argv(out: Path, pytest_args: Sequence[str]) -> list[str]:
    """The GPU tier as `nox -s gpu --no-venv`, JUnit to ``out``. Not quiet: pytest's header (versions, which
    flash-attn, the vec-ISA line, strict xfails or not) goes to the tier's log, as the README says it does."""
    nox = [sys.executable, "-m", "nox", "-s", "gpu", "--no-venv", "--"]
    return [
        *nox,
        "-p",
        "no:cacheprovider",
        "--durations=15",
        "--junitxml",
        str(out / "junit.xml"),
        *pytest_args,
    ]


def counts(summary: Path) -> str:
    """Tests by outcome and examples by property, from a run's summary JSON."""
    data = runner.load_summary(summary)
    if not data:
        return f"no summary at {summary}"
    tests = collections.Counter(t.get("outcome") for t in (data.get("tests") or {}).values())
    examples = collections.Counter(r.get("property") for r in data.get("records") or [])
    return f"tests: {dict(tests)} examples: {dict(examples)}"


def gate(args: argparse.Namespace) -> int:
    """``gemma2-regress gate`` between two bundles on the GPU tier (``--reverse`` swaps them)."""
    cand = unpack(args.bundle, args.root / "gate-cand")
    base = unpack(args.baseline, args.root / "gate-base")
    if args.reverse:
        cand, base = base, cand
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(Path.cwd()))
    argv = [
        sys.executable,
        "-m",
        "gemma2_regress.cli",
        "gate",
        "--candidate",
        str(cand),
        "--baseline",
        str(base),
    ]
    argv += ["--tiers", "gpu", "--no-perf", "--out", str(Path(args.out) / "gate"), "--", *args.pytest_args]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rc = bounded_run(argv, args.seconds, Path(args.out) / "gate.log", env)
    print((Path(args.out) / "gate.log").read_text(errors="replace"), end="")
    print(f"gate rc={rc}")
    return rc


def releases(args: argparse.Namespace) -> int:
    """Old releases over their bundles (``builds.old_releases``); exit 0 when every release got ``bad`` or
    ``good``, 1 when some verdict needs reading (unusable, incomplete, unclear, the paths disagree)."""
    settings = old_releases.Settings(
        bundle_dir=args.bundle_dir,
        root=args.root / "old-bundles",
        work=Path(args.work).resolve(),
        out=Path(args.out),
        seconds=args.seconds,
        jobs=args.jobs,
        pytest_args=tuple(args.pytest_args),
        device=args.device,
    )
    records = old_releases.run(
        args.plan_releases,
        settings,
        gpus=gpu_check.visible_gpus(),
        cores=gpu_check.cpu_cores(),
        bounded_run=bounded_run,
    )
    print((settings.out / "releases.md").read_text(), end="")
    return old_releases.exit_status(records)


def _parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m gemma2_regress.builds.offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="make a bundle from a pins file (where PyPI is reachable)")
    b.add_argument("--pins", type=Path, default=PINS, help="name==version lines (default %(default)s)")
    b.add_argument("--out", type=Path, default=BUNDLE, help="the bundle to write (default %(default)s)")
    u = sub.add_parser("unpack", help="unpack a bundle (or reuse its current unpack); print the site folder")
    t = sub.add_parser("tier", help="the GPU tier over the bundle within a time bound")
    g = sub.add_parser("gate", help="the release gate between two bundles, GPU tier only")
    r = sub.add_parser(
        "releases",
        help="old releases over their own bundles: the window selections on CUDA, a verdict each",
        description=old_releases.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--plan",
        type=Path,
        default=old_releases.PLAN,
        help="the releases and their bundles, one line each (default %(default)s)",
    )
    r.add_argument(
        "--only",
        default="",
        help="a comma list of the plan's versions to run (default: all of them, in the plan's order)",
    )
    r.add_argument(
        "--bundle-dir",
        type=Path,
        default=old_releases.BUNDLE_DIR,
        help="where the plan's bundles lie, NAME.tgz (default %(default)s)",
    )
    r.add_argument(
        "--jobs",
        type=bounded(int, at_least=1),
        default=0,
        help="releases run at once, each with its share of the CPU cores (default: all of them)",
    )
    r.add_argument(
        "--device",
        choices=old_releases.DEVICES,
        default="cuda",
        help="cuda (default); cpu: a dry run of the same tests' cpu parameters where there is no GPU "
        "(releases before 2026.8.16 import there only over a layer made from gpu/cpu-dryrun)",
    )
    r.add_argument(
        "--work",
        default=os.environ.get("OLD_RELEASES_WORK", ".cache/old-releases"),
        help="working folders (one a release) and the shared inductor cache (default %(default)s)",
    )
    for s in (u, t, g):
        s.add_argument(
            "--bundle", type=Path, default=BUNDLE, help="the (candidate) bundle (default %(default)s)"
        )
    for s in (u, t, g, r):
        s.add_argument(
            "--root",
            type=Path,
            default=Path(os.environ.get("BUNDLE_ROOT", "/tmp")),
            help="where bundles are unpacked (releases: under ROOT/old-bundles/NAME; default $BUNDLE_ROOT or /tmp)",
        )
    for s in (t, g, r):
        s.add_argument(
            "--seconds",
            type=bounded(int, at_least=1),
            default=560 if s is not r else 480,
            help="time bound (releases: for each release); at it the run is interrupted and reports what "
            "finished (default %(default)s)",
        )
        s.add_argument(
            "--out",
            default=os.environ.get("OUT", "reports/gpu"),
            help="logs and reports (default $OUT or reports/gpu)",
        )
        s.add_argument(
            "pytest_args",
            nargs="*",
            help="after --: pytest arguments (releases: instead of the window selections, not added to them)",
        )
    t.add_argument(
        "--pack-cache",
        choices=("no", "full", "portable"),
        default="no",
        help="afterwards pack the compile cache to carry to the next runner: full, the inductor folder as "
        "OUT/inductor.tgz.*; portable, torch's cache artifacts that this run's compiles made or hit as "
        "OUT/compile-cache.xz.*, with the records that spare the next runner its probes (the one that makes it "
        "start warm only after a whole tier passed; builds.portable_cache); a runner finds either beside the "
        "bundle (default no)",
    )
    g.add_argument(
        "--baseline", type=Path, required=True, help="the baseline's bundle, e.g. .gpu/base-2026.10.1.tgz"
    )
    g.add_argument(
        "--reverse", action="store_true", help="swap candidate and baseline (the gate must then fail)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.cmd == "build":
            if not args.pins.is_file():
                parser.error(f"--pins {args.pins}: no such file; pass name==version lines, e.g. {PINS}")
            if not args.out.name.endswith((".tgz", ".tar.gz")) or args.out.is_dir():
                parser.error(f"--out {args.out}: give a .tgz path, e.g. {BUNDLE}")
            print(build(args.pins, args.out))
            return 0
        if args.cmd == "unpack":
            print(unpack(args.bundle, args.root))
            return 0
        if args.cmd == "gate" and not args.pytest_args:
            args.pytest_args = list(DEFAULT_GATE_SELECTION)
        if args.cmd == "releases":
            try:
                only = [v.strip() for v in args.only.split(",") if v.strip()]
                args.plan_releases = old_releases.read_plan(args.plan, only)
            except old_releases.PlanError as exc:
                parser.error(str(exc))
            if len(args.plan_releases) > old_releases.MAX_RELEASES:
                parser.error(
                    f"{len(args.plan_releases)} releases: a device call returns {old_releases.MAX_RELEASES} "
                    "logs at most; pick some with --only"
                )
            missing = [
                f"{b}.tgz"
                for b in dict.fromkeys(b for rel in args.plan_releases for b in rel.bundles)
                if not (args.bundle_dir / f"{b}.tgz").is_file()
            ]
            if missing:
                parser.error(
                    f"no {', '.join(missing)} in {args.bundle_dir}; build them where PyPI is reachable: "
                    "bash gpu/build-old-bundles.sh"
                )
            args.jobs = args.jobs or len(args.plan_releases)
        return {"tier": tier, "gate": gate, "releases": releases}[args.cmd](args)
    except OfflineError as exc:
        print(f"offline {args.cmd}: error: {exc}", file=sys.stderr)
        return 1 if args.cmd == "build" else 2


# The gate's default: both kernels with Unsloth's own masks under the deterministic ci profile
# (on an H200 the gpu profile's 40 examples a test took over 200 s a side cold).
DEFAULT_GATE_SELECTION = (*KERNEL_TESTS, "-k", UNSLOTH_MASKS, "--hypothesis-profile", "ci")

if __name__ == "__main__":
    sys.exit(main())
