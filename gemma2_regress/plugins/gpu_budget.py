"""GPU memory shared by the xdist workers on one GPU: each test holds a claim while it runs.

A pytest plugin (registered from conftest with ``pytest_plugins``). Several workers share a GPU (the GPU
tier's ``suite.workers_per_gpu``). Without a budget, what keeps them from running out of memory together
is a worker count small enough for the largest test on every worker at once (4 on an H200). More workers
overlap more of a warm run's compiles, and without a budget ran out of memory (docs/gpu.md).

The budget, per GPU, is a ledger file that the workers of one run share (a folder the xdist controller
makes at configure and hands down in ``LEDGER_ENV``), changed under a file lock:

- Each worker holds a **base**: ``CONTEXT_GIB`` for its CUDA context plus what its caching allocator keeps
  between tests (``torch.cuda.memory_reserved()`` after ``empty_cache()``: fixtures wider than a test).
- Before a ``gpu``-marked test's set-up, its worker asks for a **claim**: the test's peak as recorded on
  this machine and stack (below) plus ``HEADROOM``, or ``UNKNOWN_GIB`` for a test without a record (what
  every worker could hold at once before the budget). It waits until the bases of all workers, the other
  claims and its own fit in the GPU's memory less ``SLACK_GIB``, and until no worker asked before it
  (first come, first served: a large claim is not passed over for ever), except that a small claim
  (``SMALL_GIB``) waits only for room while the first in line has waited less than ``HOLD_S``. A claim
  larger than what the bases leave is cut to it: the test then runs while the other workers are between
  tests.
- After the test's teardown its worker empties its allocator's cache, so that the memory goes back to the
  GPU, and its claim is dropped. A worker that dies loses its entries (its process is gone).

A test's peak is ``torch.cuda.max_memory_reserved()`` over its set-up, call and teardown, and no less than
what the allocator holds at its end: the suite never empties the cache inside a test, so what it reserved
stays reserved until this plugin empties it (and a per-example ``reset_peak_memory_stats()`` does not hide
an earlier example's peak). It is recorded only where every phase passed or the test failed as a strict
xfail (a known bug, which fails at the same point in every run of the same Unsloth: the records' key; a
test cut short, failed or skipped may not have reached its peak), and never lower than before. Beside it,
the seconds from the claim's grant to the end of the teardown, as last measured (``plugins.schedule``
hands out the longest tests first by them). The records live in the compile cache folder
(``records.GPU_PEAKS``), keyed by the GPU, torch, CUDA and Unsloth; a test's entry holds a digest of its
module's source and is used only while that source is unchanged. A fresh runner claims ``UNKNOWN_GIB`` per
test, unless a packed compile cache brought the records (``builds.portable_cache``).

At the end the controller prints one line: claims made, how many from a record, the time the tests waited
for memory, and the largest peak.

When: the claims, where more xdist workers share a GPU than its memory holds at ``suite.GPU_GIB_PER_WORKER``
each (``GEMMA2_REGRESS_WORKERS_PER_GPU=8`` on an H200), and always or never with
``GEMMA2_REGRESS_GPU_BUDGET=1`` or ``0``; the header says which and why. The peaks are recorded in every run
that runs ``gpu`` tests on a GPU, with or without claims and xdist, so that a later run on the same machine
and stack claims what its tests need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from gemma2_regress import gpu_check, records, suite
from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.plugins import report

SWITCH_ENV = "GEMMA2_REGRESS_GPU_BUDGET"  # 1 always, 0 never, unset where the workers need it
LEDGER_ENV = "GEMMA2_REGRESS_GPU_LEDGER"  # the run's ledger folder, set by the controller for its workers
FOLDER = records.GPU_PEAKS
SPOOL_STREAM = "gpu-budget"  # one line per claim, read back by the controller

CONTEXT_GIB = 1.0  # a CUDA context and its handles outside torch's allocator: 0.68 GiB measured on an H200
SLACK_GIB = 2.0  # kept free: contexts of workers that have not claimed yet, and the driver's own
# A claim without a record: GPU_GIB_PER_WORKER (suite.py) less the context, what each of the workers that
# memory alone allows could hold at once. Peaks are reserved memory, which the allocator gives back before it
# fails: the largest recorded on an H200 is 35.4 GiB reserved (docs/gpu.md), 30.2 GiB allocated.
UNKNOWN_GIB = 33.0
# A claim this small may pass larger ones waiting in line (``Ledger.claim``), until the first has waited HOLD_S.
SMALL_GIB = 1.0
HOLD_S = 30.0
# Over a recorded peak: the allocator rounds blocks and splits them by the order of earlier frees, so the same
# test's peak moves a little between runs; a claim is a schedule, not a bound on a result.
HEADROOM = (1.10, 1.0)  # x 1.10, and at least 1 GiB more

Alive = Callable[[int], bool]


def wanted(workers: int, gpus: int, gpu_gib: float | None, environ: Mapping[str, str]) -> tuple[bool, str]:
    """Whether a run of ``workers`` xdist workers over ``gpus`` GPUs (``gpu_gib`` GiB the smallest, None where
    unknown) shares them through the budget, and why (module docstring, "When")."""
    value = environ.get(SWITCH_ENV, "").strip()
    if value in ("0", "1"):
        return value == "1", f"{SWITCH_ENV}={value}"
    if value:
        raise pytest.UsageError(
            f"{SWITCH_ENV}={value!r}: use 1 (always) or 0 (never); unset, the budget applies where more "
            f"workers share a GPU than its memory holds at {suite.GPU_GIB_PER_WORKER} GiB each"
        )
    if gpu_gib is None:
        return False, "no GPU memory known (nvidia-smi)"
    per_gpu, fit = -(-workers // max(1, gpus)), suite.workers_by_memory(gpu_gib)
    return per_gpu > fit, (
        f"{per_gpu} worker(s) per GPU, {fit} fit in {gpu_gib:.0f} GiB at {suite.GPU_GIB_PER_WORKER} GiB each"
    )


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass
class Ledger:
    """One GPU's ledger: a JSON file ``path`` (``{"base": {pid: GiB}, "claim": {pid: GiB}, "queue": [pid],
    "asked": {pid: time}}``) changed under an ``fcntl`` lock on ``path`` + ``.lock``, for ``capacity`` GiB in
    all."""

    path: Path
    capacity: float
    alive: Alive = alive
    poll_s: float = 0.2
    clock: Callable[[], float] = time.time  # when a process asked: shared by the processes, so wall time

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """The state under the lock, dead processes' entries dropped; written back (atomically) on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(self.path) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    state = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    state = {}
                state = {
                    "base": {p: g for p, g in state.get("base", {}).items() if self.alive(int(p))},
                    "claim": {p: g for p, g in state.get("claim", {}).items() if self.alive(int(p))},
                    "queue": [p for p in state.get("queue", []) if self.alive(int(p))],
                    "asked": {p: t for p, t in state.get("asked", {}).items() if self.alive(int(p))},
                }
                yield state
                write_json_atomic(self.path, state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def claim(self, pid: int, gib: float, base: float) -> tuple[float, float]:
        """Wait until ``gib`` more fits for ``pid`` (holding ``base`` meanwhile) and every earlier asker has
        had its turn, then hold it; ``(GiB granted, seconds waited)``. The grant is ``gib`` cut to what the
        bases leave, so that a claim always fits once the others are between tests. A small claim (at most
        ``SMALL_GIB``) waits only for room while the first in line has waited less than ``HOLD_S``: it
        holds that one back by little, and the many small tests (a kernel group on one worker) do not wait
        behind a large one; past ``HOLD_S`` they queue too, so that the large one is not starved."""
        me, start = str(pid), time.monotonic()
        while True:
            with self._state() as state:
                state["base"][me] = base
                if me not in state["queue"]:
                    state["queue"].append(me)
                    state["asked"][me] = self.clock()
                grant = min(gib, self.capacity - sum(state["base"].values()))
                used = sum(state["base"].values()) + sum(g for p, g in state["claim"].items() if p != me)
                first = state["queue"][0]
                passes = gib <= SMALL_GIB and self.clock() - state["asked"].get(first, self.clock()) < HOLD_S
                if (first == me or passes) and used + grant <= self.capacity:
                    state["queue"].remove(me)
                    state["asked"].pop(me, None)
                    state["claim"][me] = grant
                    return grant, time.monotonic() - start
            time.sleep(self.poll_s)

    def release(self, pid: int, base: float | None) -> None:
        """Drop ``pid``'s claim and set its base (``None``: drop the process from the ledger)."""
        me = str(pid)
        with self._state() as state:
            state["claim"].pop(me, None)
            if me in state["queue"]:
                state["queue"].remove(me)
            state["asked"].pop(me, None)
            if base is None:
                state["base"].pop(me, None)
            else:
                state["base"][me] = base

    def held(self) -> dict[str, float]:
        """What each process holds now, base and claim together."""
        with self._state() as state:
            return {p: b + state["claim"].get(p, 0.0) for p, b in state["base"].items()}


def claim_for(peak: float | None) -> float:
    """The claim for a test whose recorded peak is ``peak`` GiB (``None``: no record)."""
    if peak is None:
        return UNKNOWN_GIB
    factor, least = HEADROOM
    return max(peak * factor, peak + least)


class Peaks:
    """The tests' records for ``key`` (the machine and stack): a record (``records``) in ``path`` whose
    ``tests`` are ``{node id: {"gib": peak, "seconds": last time, "source": digest}}``, an entry used only
    while its test module's source digest is unchanged."""

    def __init__(self, path: Path, key: dict[str, str]) -> None:
        self.path, self.key = path, key

    def _read(self) -> dict[str, dict]:
        entries = (records.read(self.path, self.key) or {}).get("tests", {})
        return entries if isinstance(entries, dict) else {}

    def get(self, nodeid: str, source: str) -> float | None:
        """``nodeid``'s recorded peak in GiB while its source is ``source``; None without one."""
        entry = self._read().get(nodeid)
        if isinstance(entry, dict) and entry.get("source") == source and isinstance(entry.get("gib"), float):
            return entry["gib"]
        return None

    def put(self, nodeid: str, source: str, gib: float, seconds: float | None = None) -> None:
        """Record ``nodeid``'s peak, the largest seen while its source is ``source``, and its ``seconds``, the
        latest (read, change, write under a lock; the file whole or not at all)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(self.path) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = self._read()
                before = entries.get(nodeid)
                if isinstance(before, dict) and before.get("source") == source:
                    gib = max(gib, float(before.get("gib", 0.0)))  # a peak is never recorded lower
                    seconds = before.get("seconds") if seconds is None else seconds
                entry: dict[str, Any] = {"gib": round(gib, 3), "source": source}
                if seconds is not None:
                    entry["seconds"] = round(seconds, 3)
                entries[nodeid] = entry
                write_json_atomic(self.path, {"key": self.key, "tests": entries})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def seconds_in(entries: Mapping[str, Any], sources: Mapping[str, str]) -> dict[str, float]:
    """The seconds in a record's ``tests`` (``Peaks``) of each node id in ``sources`` (node id -> its
    module's digest) whose entry has them under that digest."""
    found = {}
    for nodeid, source in sources.items():
        entry = entries.get(nodeid)
        if isinstance(entry, dict) and entry.get("source") == source:
            value = entry.get("seconds")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                found[nodeid] = float(value)
    return found


@functools.cache
def source_digest(path: Path) -> str:
    """A digest of a test module's source: a recorded peak is used only while it is unchanged (read once per
    module and process)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


class Cuda:
    """What the plugin asks of the GPU, in one place (a self-test puts a fake in ``config.stash[CUDA]``)."""

    def usable(self) -> bool:
        """Whether this process has a CUDA GPU (torch imported here if no test has yet)."""
        try:
            import torch
        except ImportError:
            return False
        return bool(torch.cuda.is_available())

    def device(self) -> tuple[str, float]:
        """This process's GPU: an identity that is the same in every process using it, and its memory in GiB."""
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return str(getattr(props, "uuid", props.name)), props.total_memory / 2**30

    def key(self) -> dict[str, str]:
        """What a recorded peak depends on beyond the test: the GPU (``"gpu"``) and the stack (``stack``)."""
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return {"gpu": f"{props.name} {props.total_memory}", **self.stack()}

    def stack(self) -> dict[str, str]:
        """The key less the GPU: torch, CUDA and Unsloth, the same in every process of a run."""
        import importlib.metadata

        import torch

        try:
            unsloth = importlib.metadata.version("unsloth")
        except importlib.metadata.PackageNotFoundError:
            unsloth = "none"
        return {"torch": torch.__version__, "cuda": str(torch.version.cuda), "unsloth": unsloth}

    def start(self) -> float:
        """Empty the allocator's cache and reset its peak; GiB still reserved (held by wider fixtures)."""
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_reserved() / 2**30

    def peak(self) -> float:
        """GiB reserved at most since ``start`` (see the module docstring)."""
        import torch

        return max(torch.cuda.max_memory_reserved(), torch.cuda.memory_reserved()) / 2**30

    def finish(self) -> float:
        """Empty the allocator's cache; GiB still reserved."""
        import torch

        torch.cuda.empty_cache()
        return torch.cuda.memory_reserved() / 2**30


def recorded_seconds(config: pytest.Config, items: Sequence[pytest.Item]) -> dict[str, float]:
    """The recorded seconds of those of ``items`` that have them on this stack (``seconds_in``), from the
    records of every GPU in the compile cache folder, the longest where several hold a test: the same in
    every worker of a run, whichever GPU it is pinned to (xdist needs one order); none where this process
    has no CUDA GPU."""
    cuda = config.stash.get(CUDA, None) or Cuda()
    if not cuda.usable():
        return {}
    stack, sources = cuda.stack(), {it.nodeid: source_digest(it.path) for it in items}
    found: dict[str, float] = {}
    for record in records.export(records.cache_folder(), FOLDER):
        if {k: v for k, v in record["key"].items() if k != "gpu"} == stack:
            for nodeid, seconds in seconds_in(record.get("tests") or {}, sources).items():
                found[nodeid] = max(seconds, found.get(nodeid, 0.0))
    return found


class _Worker:
    """The plugin in a process that runs tests: records each ``gpu``-marked test's peak (set-up to teardown)
    and, where the run shares its GPUs through a ledger in ``folder``, claims the memory around it."""

    def __init__(self, folder: Path | None, config: pytest.Config) -> None:
        self.folder, self.config = folder, config
        self.cuda: Cuda | None = None
        self.ledger: Ledger | None = None
        self.peaks: Peaks | None = None
        self.passed = True  # every phase of the running test passed (or xfailed, strict) so far
        self.strict_xfail = False  # the running test is marked xfail(strict=True)

    def _usable(self) -> bool:
        if self.cuda is None:  # looked up at the first test: after every plugin's and conftest's configure
            self.cuda = self.config.stash.get(CUDA, None) or Cuda()
        return self.cuda.usable()

    def _open(self) -> tuple[Peaks, Ledger | None]:
        assert self.cuda is not None
        if self.peaks is None:
            key = self.cuda.key()
            self.peaks = Peaks(records.path(records.cache_folder(), FOLDER, key), key)
            if self.folder is not None:
                ident, total = self.cuda.device()
                name = hashlib.sha256(ident.encode()).hexdigest()[:16]
                self.ledger = Ledger(self.folder / f"{name}.json", capacity=total - SLACK_GIB)
        return self.peaks, self.ledger

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        if not item.get_closest_marker("gpu") or not self._usable():
            return (yield)
        peaks, ledger = self._open()
        assert self.cuda is not None
        source = source_digest(item.path)
        recorded = peaks.get(item.nodeid, source)
        base = CONTEXT_GIB + self.cuda.start()
        granted, waited = ledger.claim(os.getpid(), claim_for(recorded), base) if ledger else (0.0, 0.0)
        began = time.monotonic()
        self.passed = True  # until a phase reports otherwise (pytest_runtest_logreport)
        xfail = item.get_closest_marker("xfail")
        self.strict_xfail = xfail is not None and bool(
            xfail.kwargs.get("strict", item.config.getini("xfail_strict"))
        )
        finished = False
        try:
            result = yield
            finished = True
            return result
        finally:
            peak = self.cuda.peak()
            after = CONTEXT_GIB + self.cuda.finish()
            # A test cut short, failed or skipped may not have reached its peak (module doc).
            if finished and self.passed:
                peaks.put(item.nodeid, source, peak, time.monotonic() - began)
            if ledger is not None:
                ledger.release(os.getpid(), after)
                report.spool(
                    {
                        "test": item.nodeid,
                        "claim_gib": round(granted, 3),
                        "recorded": recorded is not None,
                        "peak_gib": round(peak, 3),
                        "waited_s": round(waited, 3),
                    },
                    SPOOL_STREAM,
                )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        xfailed = report.outcome == "skipped" and hasattr(report, "wasxfail")
        if not (report.outcome == "passed" or (xfailed and self.strict_xfail)):
            self.passed = False

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.ledger is not None:
            self.ledger.release(os.getpid(), None)


def summary_line(lines: list[dict]) -> str | None:
    """The controller's last line on the budget, from the workers' spooled claims; None where none was made."""
    if not lines:
        return None
    top = max(lines, key=lambda r: r["peak_gib"])
    longest = max(lines, key=lambda r: r["waited_s"])
    recorded = sum(1 for r in lines if r["recorded"])
    waited = sum(r["waited_s"] for r in lines)
    over = sum(1 for r in lines if r["recorded"] and r["peak_gib"] > r["claim_gib"])
    line = (
        f"GPU memory budget: {len(lines)} claim(s), {recorded} from recorded peaks, the rest {UNKNOWN_GIB:g} GiB; "
        f"{waited:.1f} s waited for memory in all, at most {longest['waited_s']:.1f} s ({longest['test']}); "
        f"largest peak {top['peak_gib']:.1f} GiB ({top['test']})"
    )
    return line + (f"; {over} recorded test(s) went over their claim" if over else "")


class _Controller:
    """The plugin in the xdist controller: makes the ledger folder, prints the summary line."""

    def __init__(self, folder: Path, before: str | None, why: str) -> None:
        self.folder, self.before, self.why = folder, before, why

    def pytest_report_header(self, config: pytest.Config) -> str:
        return f"GPU memory budget: on ({self.why})"

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run = report.run_of(terminalreporter.config)
        lines = report.read_spool(run.spool, SPOOL_STREAM) if run is not None and run.spool else []
        line = summary_line(lines)
        if line:
            terminalreporter.write_line(line)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        for path in self.folder.glob("*"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()
        if self.before is None:
            os.environ.pop(LEDGER_ENV, None)
        else:
            os.environ[LEDGER_ENV] = self.before


CUDA = pytest.StashKey[Cuda]()  # where a self-test's conftest puts a fake


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: claims where the controller made a ledger
        folder = os.environ.get(LEDGER_ENV)
        config.pluginmanager.register(_Worker(Path(folder) if folder else None, config), "gemma2-gpu-budget")
    elif config.pluginmanager.hasplugin("xdist") and getattr(config.option, "numprocesses", None):
        switch = os.environ.get(SWITCH_ENV, "").strip()
        gib = None if switch else gpu_check.gpu_memory_gib()  # nvidia-smi only where it decides
        gpus_set = os.environ.get("GEMMA2_REGRESS_GPUS", "").strip()  # set by the gpu tier (suite.tier_env)
        gpus = int(gpus_set) if gpus_set.isdigit() else 1
        workers = config.option.numprocesses  # a number by now: xdist resolves "auto" at cmdline_main
        on, why = wanted(workers if isinstance(workers, int) else 1, gpus, gib, os.environ)
        if not on:
            return
        before = os.environ.get(LEDGER_ENV)
        folder = Path(tempfile.mkdtemp(prefix="gemma2-gpu-ledger-"))
        os.environ[LEDGER_ENV] = str(folder)  # the workers start after this and inherit it
        config.pluginmanager.register(_Controller(folder, before, why), "gemma2-gpu-budget")
    else:  # one process runs the tests: it records peaks, and has no one to share its GPU with
        config.pluginmanager.register(_Worker(None, config), "gemma2-gpu-budget")
