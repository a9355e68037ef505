"""Old Unsloth releases on an air-gapped GPU runner: the window bugs' true range (docs/bisect.md, "Before 2026.8.16").

Releases before 2026.8.16 do not import on a CPU, and each needs neighbours the runner's image does not have
(an older transformers, trl, datasets...). The plan file (``gpu/old-releases.txt``) names, one line a release,
the release and the offline bundles it runs over, in ``PYTHONPATH`` order::

    2026.8.15   unsloth-2026.8.15   layer-tf-5.5.0   layer-common

(bundle ``NAME`` is ``<bundle dir>/NAME.tgz``, built from ``gpu/bundle-NAME.txt``; a layer shared by several
releases is unpacked once). For each release, within its own time bound and in its own working folder (old
``unsloth_zoo`` writes ``unsloth_compiled_cache`` into the current folder), one pytest process runs
``SELECTION`` on CUDA with the recorded upstream bugs set aside (``GEMMA2_REGRESS_KNOWN_ISSUES=ignore``), so
that the raw verdicts show. Several releases run at once (``jobs``); each gets its share of the CPU cores
for inductor's compile workers.

Each path's verdict (``classify``) is read from the run's summary JSON:

- ``bad``         some test past the window (W + 1 and 2W + 1 tokens on a sliding window: ``PAST``) failed
                  with the tolerance rule's ``mismatch`` or the flash path's window check
                  (``WINDOW_FAILURES``), and every control (W - 1 and W tokens; the flash path's global
                  layers) passed;
- ``good``        every past-the-window test and every control passed;
- ``unusable``    the release does not run here: a bundle missing or broken, Unsloth does not import
                  (``crash:UnslothUnavailable``), or pytest could not collect the selection; the reason
                  is the error's first line;
- ``incomplete``  no decision, because tests did not run (the time bound, a crash of the process);
- ``unclear``     failures other than a window mismatch, or failing controls: read the log.

The packed batches (``flash_attn_varlen_func``) are reported apart (``packed``): a release without Unsloth's
packed path (2024.12.9 ignores ``packed_seq_lengths`` and attends across the segments) fails them whatever
its window, so they say nothing about the window. A release is
``bad`` or ``good`` when both paths agree, ``unusable`` when either is, else both verdicts are named.

Outputs under ``out``: ``releases.json`` (per release: bundles, exit status, seconds, verdicts with their
reasons, every test's outcome and first failure), ``releases.md`` (a table) and ``<version>.log`` (its
pytest output), each written whole. A device call returns 8 files at most: at most 6 releases a call.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from gemma2_regress.atomic import write_json_atomic, write_text_atomic
from gemma2_regress.builds import runner
from gemma2_regress.builds.bundle import OfflineError, unpack
from gemma2_regress.plugins import strict_xfail

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "gpu" / "old-releases.txt"
BUNDLE_DIR = Path(".gpu/old")
# The window selections of docs/bisect.md on CUDA, in one process (one Unsloth import a release). The flash
# path first: it compiles nothing of Unsloth's (its Triton RoPE aside), while the slow path's first test
# compiles the softcapping kernel with max-autotune; a release cut at its bound still has its flash verdict.
SLOW_TESTS = "tests/kernel/test_slow_kernel.py"
FLASH_TESTS = "tests/model/test_unsloth_flash_layer.py"
SELECTION = (FLASH_TESTS, SLOW_TESTS, "-m", "gpu", "-k", "(window_edge or takes_flash) and cuda")
DEVICES = ("cuda", "cpu")  # cpu: a dry run where there is no GPU (gpu/cpu-dryrun, docs/bisect.md)
MAX_RELEASES = 6  # a device call returns 8 files: releases.json, releases.md and one log a release
PAST = ("L17", "L33")  # W + 1 and 2W + 1 tokens at W = 16: where one key too many shows
TESTS = {
    "slow": "test_window_edge",
    "flash": "test_unpadded_prefill_takes_flash_dense",
    "packed": "test_packed_batch_takes_flash_varlen",
}


def selection(device: str = "cuda") -> tuple[str, ...]:
    """``SELECTION`` on ``device``: on "cpu" the same tests' cpu parameters, without ``-m gpu``."""
    if device == "cuda":
        return SELECTION
    return (FLASH_TESTS, SLOW_TESTS, "-k", f"(window_edge or takes_flash) and {device}")


def _mine(tests: Sequence[runner.Outcome], path: str, device: str) -> list[runner.Outcome]:
    return [t for t in tests if f"::{TESTS[path]}[{device}-" in t.nodeid]


VERSION = re.compile(r"^\d{4}\.\d{1,2}(\.\d+)?(\.post\d+)?$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PlanError(ValueError):
    """The plan file cannot be used; the message names the line and the fix."""


@dataclasses.dataclass(frozen=True)
class Release:
    """One release of the plan: its version and its bundles' names, first on ``PYTHONPATH`` first."""

    version: str
    bundles: tuple[str, ...]


def read_plan(path: Path, only: Sequence[str] = ()) -> list[Release]:
    """The plan's releases in file order (``only``: just these versions, in file order). A line is a
    version and one or more bundle names; ``#`` starts a comment. ``PlanError`` for a missing file, a
    malformed line, a version twice, an ``only`` version the plan lacks, or no release."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise PlanError(f"cannot read the plan {path} ({exc.strerror}); pass e.g. --plan {PLAN}") from None
    plan: list[Release] = []
    for n, raw in enumerate(lines, 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        version, bundles = fields[0], tuple(fields[1:])
        if not VERSION.match(version) or not bundles or not all(NAME.match(b) for b in bundles):
            raise PlanError(
                f"{path}:{n}: want 'VERSION BUNDLE [BUNDLE...]' (e.g. '2026.8.15 unsloth-2026.8.15 "
                f"layer-common'), got {raw.strip()!r}"
            )
        if any(r.version == version for r in plan):
            raise PlanError(f"{path}:{n}: release {version} is planned twice; keep one line")
        plan.append(Release(version, bundles))
    unknown = [v for v in only if v not in {r.version for r in plan}]
    if unknown:
        raise PlanError(
            f"{', '.join(unknown)} not in the plan {path}; it has {', '.join(r.version for r in plan)}"
        )
    chosen = [r for r in plan if not only or r.version in only]
    if not chosen:
        raise PlanError(f"the plan {path} names no release; add lines 'VERSION BUNDLE [BUNDLE...]'")
    return chosen


# --- verdicts -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PathVerdict:
    """One path's verdict for one release, and the counts it rests on."""

    verdict: str  # bad | good | unusable | incomplete | unclear
    reason: str
    past_window_mismatch: int = 0  # past-the-window tests failed with the tolerance rule's mismatch
    past: int = 0  # past-the-window tests that ran
    controls_passed: int = 0
    controls: int = 0  # controls that ran


# What a window one key too wide fails with: the tolerance rule itself, or (flash path) the test's check of
# the window_size flash-attn received (tests/model/test_unsloth_flash_layer.py, assert_flash_call), which
# speaks first where the output stays inside the bound (logits near the cap, where an extra key weighs little).
WINDOW_FAILURES = ("mismatch: err(target)", "right bound ", "lets the last of ")


def window_mismatch(t: runner.Outcome) -> bool:
    """A failed test whose failure is the tolerance rule's mismatch or the flash window check
    (``WINDOW_FAILURES``), not just any AssertionError (torch raises those too)."""
    return t.failed and any(
        f.verdict == "mismatch" and any(w in f.message for w in WINDOW_FAILURES) for f in t.failures
    )


def _past(nodeid: str, path: str) -> bool:
    params = nodeid.split("[", 1)[-1]
    lengths = any(f"-{n}-" in params for n in PAST)
    return lengths if path == "slow" else lengths and "-sliding-" in params


def classify_path(
    path: str, tests: Sequence[runner.Outcome], expected: int | None = None, device: str = "cuda"
) -> PathVerdict:
    """``path``'s verdict ("slow" or "flash", module doc) from the run's per-test outcomes on ``device``;
    ``expected``: how many of its tests the selection holds (fewer ran: ``incomplete`` unless decided)."""
    mine = _mine(tests, path, device)
    unusable = [t for t in mine if any(t.verdict.startswith(u) for u in runner.UNUSABLE)]
    if unusable:
        return PathVerdict("unusable", f"does not import: {unusable[0].message or unusable[0].verdict}")
    ran = [t for t in mine if t.outcome not in ("skipped", "xfailed")]
    past = [t for t in ran if _past(t.nodeid, path)]
    controls = [t for t in ran if not _past(t.nodeid, path)]
    v = PathVerdict(
        "unclear",
        "",
        sum(map(window_mismatch, past)),
        len(past),
        sum(not t.failed for t in controls),
        len(controls),
    )
    others = [t for t in ran if t.failed and not (window_mismatch(t) and t in past)]
    skipped = [t for t in mine if t.outcome == "skipped"]
    if others:
        first = others[0]
        v.reason = (
            f"{len(others)} failure(s) other than a mismatch past the window, e.g. {_short(first.nodeid)}: "
            f"{first.verdict} {first.message}".strip()
        )
        return v
    if v.past_window_mismatch:
        v.verdict = "bad"
        v.reason = (
            f"{v.past_window_mismatch} of {v.past} past-the-window tests mismatch; "
            f"{v.controls_passed} of {v.controls} controls pass"
        )
        if expected is not None and len(ran) < expected:
            v.reason += f" ({expected - len(ran)} test(s) did not run)"
        return v
    if not ran and skipped:
        return PathVerdict("unusable", f"skipped: {skipped[0].message or 'no reason recorded'}")
    if (expected is not None and len(ran) < expected) or not ran:
        v.verdict = "incomplete"
        v.reason = f"{len(ran)} of {expected if expected is not None else '?'} tests ran"
        v.reason += ", all passed" if ran else ""
        return v
    v.verdict, v.reason = "good", f"all {v.past} past-the-window tests and {v.controls} controls pass"
    return v


def packed_summary(tests: Sequence[runner.Outcome], device: str = "cuda") -> str:
    """The packed batches' tests in one phrase (not part of any verdict)."""
    mine = _mine(tests, "packed", device)
    if not mine:
        return "not run"
    failed = [t for t in mine if t.failed]
    if not failed:
        return f"{len(mine)} passed"
    return f"{len(failed)} of {len(mine)} failed, e.g. {failed[0].verdict}: {failed[0].message}"[:300]


def release_verdict(slow: PathVerdict, flash: PathVerdict) -> str:
    """``bad``/``good`` where both paths agree, ``unusable`` where either is, else both named."""
    if "unusable" in (slow.verdict, flash.verdict):
        return "unusable"
    if slow.verdict == flash.verdict:
        return slow.verdict
    return f"slow {slow.verdict}, flash {flash.verdict}"


# Tests a path's selection holds: test_window_edge 4 lengths x 2 kernels x 2 mask builders; the dense flash
# test 4 lengths x sliding/global x 2 dtypes x 2 logit scales.
EXPECTED = {"slow": 16, "flash": 32}


def classify(
    tests: list[runner.Outcome] | None,
    exit_code: int,
    log: str,
    timed_out: bool = False,
    device: str = "cuda",
) -> dict:
    """The release's verdicts from its per-test outcomes on ``device`` (None: no summary JSON), pytest's
    exit code, its log (for the error that stopped a run without results) and whether it was stopped at
    its bound."""
    if not tests:
        error = _first_error(log)
        if timed_out:
            kind = "incomplete"
            why = "stopped at its time bound before any test finished" + (f" ({error})" if error else "")
        else:
            kind, why = "unusable", error or f"pytest exit {exit_code} left no per-test results"
        pv = PathVerdict(kind, why)
        return {"verdict": kind, "reason": why, "slow": pv, "flash": pv, "packed": "not run"}
    slow = classify_path("slow", tests, EXPECTED["slow"], device)
    flash = classify_path("flash", tests, EXPECTED["flash"], device)
    verdict = release_verdict(slow, flash)
    reason = (
        slow.reason if slow.verdict == "unusable" else flash.reason if flash.verdict == "unusable" else ""
    )
    return {
        "verdict": verdict,
        "reason": reason,
        "slow": slow,
        "flash": flash,
        "packed": packed_summary(tests, device),
    }


def _short(nodeid: str) -> str:
    return nodeid.split("::", 1)[-1]


_ERROR_LINE = re.compile(r"^(E\s+)?(?P<err>[A-Za-z_][\w.]*(Error|Exception|Unavailable|Exit)\b: .*)$")


def _first_error(text: str) -> str:
    """The first line of a pytest log that names an exception (``ImportError: ...``, pytest's ``E   ...``
    lines of a collection error), else pytest's own ``ERROR`` / ``!`` line, else ''."""
    fallback = ""
    for line in text.splitlines():
        m = _ERROR_LINE.match(line.strip())
        if m:
            return m.group("err")[:300]
        if not fallback and line.startswith(("ERROR ", "! ")):
            fallback = line.strip()[:300]
    return fallback


# --- running ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    """How each release runs: bundles from ``bundle_dir``, unpacked under ``root``, working folders under
    ``work``, reports to ``out``, ``seconds`` per release, ``jobs`` releases at once."""

    bundle_dir: Path
    root: Path
    work: Path
    out: Path
    seconds: float
    jobs: int
    pytest_args: tuple[str, ...] = ()  # empty: selection(device)
    grace: float = 20.0  # after SIGINT at the bound, how long pytest may take to write its reports
    device: str = "cuda"  # "cpu": a dry run without a GPU, the selection's cpu parameters

    @property
    def args(self) -> tuple[str, ...]:
        """The pytest arguments that choose the tests."""
        return self.pytest_args or selection(self.device)


def environment(
    sites: Sequence[Path], work: Path, cache: Path, threads: int, gpu: str | None, device: str = "cuda"
) -> dict[str, str]:
    """The test process's environment: the release's sites then the suite first on ``PYTHONPATH``, the
    records set aside, a GPU required (``device`` "cuda"), offline, its own compile folder, the shared
    inductor cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=os.pathsep.join([*map(str, sites), str(ROOT)]),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        UNSLOTH_DISABLE_STATISTICS="1",
        UNSLOTH_COMPILE_LOCATION=str(work / "unsloth_compiled_cache"),
        TORCHINDUCTOR_CACHE_DIR=str(cache),
        TORCHINDUCTOR_COMPILE_THREADS=str(threads),
        GEMMA2_REGRESS_REPORT=str(work / "summary.json"),
        GEMMA2_REGRESS_COSTS=str(work / "costs.json"),
        GEMMA2_REGRESS_TIER="gpu" if device == "cuda" else "cpu",
        HYPOTHESIS_PROFILE="gpu" if device == "cuda" else "ci",
    )
    if device == "cuda":
        env["GEMMA2_REGRESS_REQUIRE_GPU"] = "1"
    else:
        env.pop("GEMMA2_REGRESS_REQUIRE_GPU", None)
    env[strict_xfail.IGNORE_ENV] = "ignore"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def pytest_argv(s: Settings, work: Path) -> list[str]:
    """pytest over the suite's test files by absolute path, run from the release's working folder."""
    args = [str(ROOT / a) if a.startswith("tests/") else a for a in s.args]
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--rootdir",
        str(ROOT),
        "-c",
        str(ROOT / "pyproject.toml"),
        "--junitxml",
        str(work / "junit.xml"),
        *(["--require-gpu"] if s.device == "cuda" else []),
        *args,
    ]


def run_release(
    rel: Release,
    s: Settings,
    threads: int,
    gpu: str | None,
    bounded_run: Callable[..., int],
) -> dict:
    """Unpack ``rel``'s bundles, run the selection within ``s.seconds``, classify; the release's record."""
    start = time.time()
    log = s.out / f"{rel.version}.log"
    work = s.work / rel.version
    record: dict = {"version": rel.version, "bundles": list(rel.bundles)}
    try:
        sites = [unpack(s.bundle_dir / f"{b}.tgz", s.root / b) for b in rel.bundles]
    except OfflineError as exc:
        pv = PathVerdict("unusable", f"bundle: {exc}")
        write_text_atomic(log, f"{rel.version}: unusable: bundle: {exc}\n")
        return {
            **record,
            **{"verdict": "unusable", "reason": pv.reason, "slow": pv, "flash": pv, "packed": "not run"},
            **{
                "exit_code": None,
                "timed_out": False,
                "seconds": round(time.time() - start, 1),
                "unpack_s": None,
            },
            "tests": [],
        }
    unpacked = time.time() - start
    work.mkdir(parents=True, exist_ok=True)
    (work / "summary.json").unlink(missing_ok=True)
    env = environment(sites, work, s.work / "inductor-cache", threads, gpu, s.device)
    began = time.time()
    rc = bounded_run(pytest_argv(s, work), s.seconds, log, env, cwd=work, grace=s.grace)
    timed_out = time.time() - began >= s.seconds
    tests = runner.read_summary(work / "summary.json")
    text = log.read_text(errors="replace") if log.is_file() else ""
    verdicts = classify(tests, rc, text, timed_out, s.device)
    return {
        **record,
        **verdicts,
        "exit_code": rc,
        "timed_out": timed_out,
        "seconds": round(time.time() - start, 1),
        "unpack_s": round(unpacked, 1),
        "versions": _versions(work / "summary.json"),
        "tests": [
            {"test": _short(t.nodeid), "outcome": t.outcome, "verdict": t.verdict, "message": t.message}
            for t in tests or []
        ],
    }


def run(
    plan: Sequence[Release],
    s: Settings,
    *,
    gpus: int | None,
    cores: int,
    bounded_run: Callable[..., int],
    say: Callable[[str], None] = print,
) -> list[dict]:
    """Every release of ``plan``, ``s.jobs`` at a time (job i on GPU i mod ``gpus`` where several are
    visible), each within ``s.seconds``; reports written under ``s.out`` as each finishes. The records in
    plan order."""
    s.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, cores // max(1, min(s.jobs, len(plan))))
    records: dict[str, dict] = {}
    say(
        f"old releases: {len(plan)} release(s), {s.jobs} at a time, {s.seconds:.0f} s each, "
        f"{threads} compile thread(s) each"
    )

    def one(i: int, rel: Release) -> dict:
        gpu = str(i % gpus) if gpus and gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ else None
        return run_release(rel, s, threads, gpu, bounded_run)

    with concurrent.futures.ThreadPoolExecutor(max_workers=s.jobs) as pool:
        futures = {pool.submit(one, i, rel): rel for i, rel in enumerate(plan)}
        for fut in concurrent.futures.as_completed(futures):
            rel = futures[fut]
            rec = fut.result()
            records[rel.version] = rec
            say(f"{rel.version}: {rec['verdict']} ({rec['seconds']:.0f} s) {_line(rec)}")
            write_reports([records[r.version] for r in plan if r.version in records], s.out, s)
    return [records[r.version] for r in plan]


def _versions(summary: Path) -> dict:
    """What the run imported (Python, torch, transformers, unsloth, zoo, trl, GPU), from its summary JSON."""
    found = runner.load_summary(summary).get("versions")
    return found if isinstance(found, dict) else {}


def _line(rec: dict) -> str:
    slow, flash = rec["slow"], rec["flash"]
    return f"slow: {slow.verdict} ({slow.reason}); flash: {flash.verdict} ({flash.reason}); packed: {rec['packed']}"


def write_reports(records: Iterable[dict], out: Path, s: Settings) -> None:
    """``releases.json`` and ``releases.md`` under ``out``, each written whole."""
    records = list(records)
    write_json_atomic(
        out / "releases.json", {"device": s.device, "selection": list(s.args), "releases": records}
    )
    rows = [
        f"| release | verdict | slow path (`test_window_edge`, {s.device}) "
        f"| flash path (`takes_flash` dense, {s.device}) | packed | versions | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        slow, flash = r["slow"], r["flash"]
        v = r.get("versions") or {}
        versions = ", ".join(f"{k} {v[k]}" for k in ("unsloth", "transformers", "torch", "gpu") if k in v)
        cells = [
            r["version"],
            r["verdict"],
            f"{slow.verdict}: {slow.reason}",
            f"{flash.verdict}: {flash.reason}",
            r["packed"][:160],
            versions,
            f"{r['seconds']:.0f}",
        ]
        rows.append("| " + " | ".join(c.replace("\n", " ").replace("|", "\\|") for c in cells) + " |")
    head = [
        f"# Old releases: the window selections on {s.device}, records set aside",
        "",
        "    pytest " + " ".join(repr(a) if " " in a else a for a in s.args),
        "",
    ]
    write_text_atomic(out / "releases.md", "\n".join(head + rows) + "\n")


def exit_status(records: Sequence[dict]) -> int:
    """0 where every release got ``bad`` or ``good`` on both paths, 1 otherwise (a verdict to read)."""
    return 0 if all(r["verdict"] in ("bad", "good") for r in records) else 1
