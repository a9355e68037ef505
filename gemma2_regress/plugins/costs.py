"""The suite's own cost: time per Hypothesis example and first-call (compile) time, per tier and target.

A pytest plugin (registered from conftest with ``pytest_plugins``). For every test call it times
each Hypothesis example by wrapping ``test.hypothesis.inner_test`` (the hook Hypothesis keeps
reassignable for exactly this kind of wrapper); a test without Hypothesis counts as one example.
At the end of the run it prints, per (tier, target):

- ``first s``   the first example run in the process for that tier and target (where compilation
  lands: Unsloth's kernel is ``torch.compile``'d); the largest over xdist workers;
- ``ms/example`` the median of all other examples, the steady-state cost of one example;
- tests, examples and the total time inside examples.

Tier is the ``device`` parameter (``cpu``/``cuda``) where a test has one, else ``gpu`` for tests
marked ``gpu`` and ``cpu`` otherwise; target is the ``target`` parameter's name, else
``(<test module>)``.
The same figures go to ``reports/<tier>/costs.json`` (``report.report_path``: ``cpu``/``gpu`` under
nox and tox; ``GEMMA2_REGRESS_COSTS`` overrides the path), so later changes can be held to them:
``{"rows": [<summarize row>, ...], "tests": [<record>, ...]}``, written at the end of the session
(also an interrupted one). Cost: two ``perf_counter`` calls per example.

Each record also carries what ``torch.compile`` did during the call (``compile_counters``: seconds in
Dynamo's compile, graphs compiled, FX-graph and AOTAutograd cache hits and misses), so the run ends with
the compile / run split of the test calls over every worker and the compile cache's hit rate
(``compile_split``), also in costs.json under ``"compile"``, then the tests that missed the FX-graph
cache, costliest first (``misses_line``); a call that compiled keeps its largest
Dynamo timers too (``compile_timers``, by Dynamo's names: what a cache hit still costs). And when its
call began (``start_s``, from the plugin's configure in that process): the run's last line says how long
each process took to reach its first test (``start_line``), the start a time bound cuts into before any
test runs.

The records of a session live in one ``Costs`` on ``config.stash[COSTS]`` (``costs_of``). An xdist
worker spools each record as its test ends (``report.spool``, stream ``costs``), and the controller
reads them back at the end: a run cut short by a time bound keeps the cost of every test that finished.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
import time
from typing import Any

import pytest

from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.plugins import report


def _tier_and_target(item: pytest.Item) -> tuple[str, str]:
    params = getattr(getattr(item, "callspec", None), "params", {}) or {}
    tier = params.get("device") or ("gpu" if item.get_closest_marker("gpu") else "cpu")
    target = params.get("target")
    name = getattr(target, "name", None) or (str(target) if target is not None else f"({item.path.stem})")
    return str(tier), name


CACHE_KEYS = ("fxgraph_hit", "fxgraph_miss", "aot_hit", "aot_miss")  # counters that only grow in a process
COMPILE_KEYS = ("compile_s", "graphs", *CACHE_KEYS)
# Where the compile time goes, from Dynamo's own timers (``compilation_time_metrics``), summed per phase:
# a warm run that still spends most of its time compiling says here whether that is Dynamo's tracing,
# Inductor (its cache load on a hit, through AOTAutograd's cache or not; code generation and kernel builds
# on a miss), the choice among matmul templates (max-autotune, inside the compile), or Triton's
# autotuning at a kernel's first call, which runs after the compile and is counted in no compile second.
PHASES = {
    "trace_s": ("bytecode_tracing",),
    "inductor_s": ("compile_fx_inner", "AOTAutogradCache.inductor_load"),
    "template_autotune_s": ("_template_autotuning", "_template_precompiling"),
    "first_call_autotune_s": (
        "CachingAutotuner.benchmark_all_configs",
        "CachingAutotuner.coordinate_descent_tuning",
    ),
}
PHASE_KEYS = tuple(PHASES)
TOP_TIMERS = 8  # a record's largest timers (``top_timers``)


def compile_counters() -> dict[str, float]:
    """What ``torch.compile`` has done in this process so far: seconds inside Dynamo's compile (tracing,
    AOTAutograd and Inductor, loading from the caches included), graphs compiled, the FX-graph and
    AOTAutograd cache hits and misses, and the seconds per phase (``PHASES``: a timer counts toward a
    phase whose names it equals or ends with). Zeros while torch is not imported (this never imports it).
    Dynamo's timers (seconds, graphs, phases) restart at ``torch._dynamo.reset()``, which
    ``plugins.fresh_dynamo`` calls before each test's set-up: take differences within one test's call."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return dict.fromkeys(COMPILE_KEYS + PHASE_KEYS, 0.0)
    metrics = utils.compilation_time_metrics
    times = metrics.get("_compile.compile_inner", [])
    inductor, aot = utils.counters.get("inductor", {}), utils.counters.get("aot_autograd", {})
    out = {
        "compile_s": float(sum(times)),
        "graphs": float(len(times)),
        "fxgraph_hit": float(inductor.get("fxgraph_cache_hit", 0)),
        "fxgraph_miss": float(inductor.get("fxgraph_cache_miss", 0)),
        "aot_hit": float(aot.get("autograd_cache_hit", 0)),
        "aot_miss": float(aot.get("autograd_cache_miss", 0)),
    }
    for phase, names in PHASES.items():
        out[phase] = float(sum(sum(v) for k, v in list(metrics.items()) if k.endswith(names)))
    return out


def compile_timers() -> dict[str, float]:
    """Every Dynamo timer's seconds so far in this process (``compilation_time_metrics``, summed per name;
    empty while torch is not imported). Nested timers overlap: a record keeps the largest differences."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return {}
    return {name: float(sum(v)) for name, v in list(utils.compilation_time_metrics.items())}


def top_timers(before: dict[str, float], after: dict[str, float], n: int = TOP_TIMERS) -> dict[str, float]:
    """The ``n`` timers that grew most between two ``compile_timers`` readings, each above 0.5 s: where one
    test's compile time went, by Dynamo's own names (a cache hit that still costs seconds shows here)."""
    grown = {k: v - before.get(k, 0.0) for k, v in after.items()}
    top = sorted(((k, d) for k, d in grown.items() if d > 0.5), key=lambda kd: -kd[1])[:n]
    return {k: round(d, 2) for k, d in top}


def compile_split(records: list[dict]) -> dict[str, float]:
    """The test calls' seconds (``tests_s``, summed over every worker) and what ``torch.compile`` did
    during them (``COMPILE_KEYS`` and ``PHASE_KEYS``, summed); records without them count as none."""
    out = {"tests_s": round(sum(r.get("call_s", sum(r["examples_s"])) for r in records), 2)}
    for key in COMPILE_KEYS + PHASE_KEYS:
        out[key] = round(sum(r.get("compile", {}).get(key, 0.0) for r in records), 2)
    return out


def split_line(split: dict[str, float]) -> str:
    """One line of ``compile_split``: how much of the test time was compilation, in which phases, and the
    cache's hit rate."""

    def rate(hit: float, miss: float) -> str:
        return f"{hit:.0f} hits / {miss:.0f} misses" + (f" ({hit / (hit + miss):.0%})" if hit + miss else "")

    tests, comp = split["tests_s"], split["compile_s"]
    share = f" ({comp / tests:.0%})" if tests else ""
    phases = (
        f"Dynamo tracing {split.get('trace_s', 0):.1f} s, Inductor {split.get('inductor_s', 0):.1f} s, of which "
        f"matmul template autotuning {split.get('template_autotune_s', 0):.1f} s"
    )
    return (
        f"test calls {tests:.1f} s, of which torch.compile {comp:.1f} s{share} in {split['graphs']:.0f} "
        f"graphs ({phases}); Triton autotuning at first calls {split.get('first_call_autotune_s', 0):.1f} s; "
        f"compile cache: FX graph {rate(split['fxgraph_hit'], split['fxgraph_miss'])}, "
        f"AOTAutograd {rate(split['aot_hit'], split['aot_miss'])}"
    )


MISSES_SHOWN = 5  # the costliest tests that missed the FX-graph cache (``misses_line``)


def misses_line(records: list[dict], n: int = MISSES_SHOWN) -> str | None:
    """The tests whose calls missed the FX-graph cache, the ``n`` with the most Inductor seconds first, and
    how many missed in all; None where none did. On a warm cache a miss means the test compiled another
    graph than the run that filled it (another shape, or a setting in the cache key), the place to look."""
    missed = [r for r in records if r.get("compile", {}).get("fxgraph_miss", 0) > 0]
    if not missed:
        return None
    missed.sort(key=lambda r: -r["compile"].get("inductor_s", 0.0))
    shown = ", ".join(
        f"{r.get('test', '?').rsplit('/', 1)[-1]} ({r['compile']['fxgraph_miss']:.0f}, "
        f"Inductor {r['compile'].get('inductor_s', 0.0):.1f} s)"
        for r in missed[:n]
    )
    more = f", and {len(missed) - n} more" if len(missed) > n else ""
    return f"FX-graph cache misses in {len(missed)} test(s): {shown}{more}"


def start_line(records: list[dict]) -> str | None:
    """How long each process took from the plugin's configure to its first test call (``start_s`` of its
    first record): collection, the conftests' set-up (the model tests import Unsloth there) and the first
    test's fixtures. None where no record has it."""
    first: dict[str, float] = {}
    for r in records:
        if "start_s" in r:
            first.setdefault(r.get("worker", "main"), r["start_s"])
    if not first:
        return None
    lo, hi = min(first.values()), max(first.values())
    span = f"{lo:.1f} s" if len(first) == 1 else f"{lo:.1f} to {hi:.1f} s over {len(first)} processes"
    return f"from configure to the first test call: {span} (collection, conftest set-up, first fixtures)"


def summarize(records: list[dict]) -> list[dict]:
    """One row per (tier, target), in first-seen order; see the module docstring for the columns.

    Records of one process keep run order; a record may carry ``worker`` (xdist) so that the
    first example is taken per process and the largest of those is reported.
    """
    groups: dict[tuple[str, str], dict] = {}
    firsts: dict[tuple[str, str, str], float] = {}
    for r in records:
        key = (r["tier"], r["target"])
        g = groups.setdefault(
            key, {"tier": key[0], "target": key[1], "tests": 0, "examples": 0, "rest": [], "total_s": 0.0}
        )
        ex = r["examples_s"]
        g["tests"] += 1
        g["examples"] += len(ex)
        g["total_s"] += sum(ex)
        if not ex:
            continue
        fkey = (*key, r.get("worker", ""))
        if fkey not in firsts:
            firsts[fkey] = ex[0]
            g["rest"].extend(ex[1:])
        else:
            g["rest"].extend(ex)
    rows = []
    for key, g in groups.items():
        first = max((v for k, v in firsts.items() if k[:2] == key), default=0.0)
        rows.append(
            {
                "tier": g["tier"],
                "target": g["target"],
                "tests": g["tests"],
                "examples": g["examples"],
                "first_s": round(first, 3),
                "ms_per_example": round(1e3 * statistics.median(g["rest"]), 2) if g["rest"] else None,
                "total_s": round(g["total_s"], 2),
            }
        )
    return rows


@dataclasses.dataclass
class Costs:
    """One session's cost records (``config.stash[COSTS]``): one per test call, in run order, with
    tier, target, test and the seconds of each example; on the controller also the workers'."""

    records: list[dict] = dataclasses.field(default_factory=list)
    path: str | None = None  # where costs.json went, once written
    error: str | None = None  # why it was not written


COSTS = pytest.StashKey[Costs]()
SPOOL_STREAM = "costs"  # the workers' records, under the report plugin's spool folder


class _Plugin:
    """The hooks, bound to one session's ``Costs``."""

    def __init__(self, costs: Costs, config: pytest.Config) -> None:
        self.costs, self.config = costs, config
        self.configured = time.perf_counter()  # start_s of each record counts from here

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        hyp = getattr(getattr(item, "obj", None), "hypothesis", None)
        inner = getattr(hyp, "inner_test", None)
        times: list[float] = []
        if inner is not None:

            @functools.wraps(inner)
            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    times.append(time.perf_counter() - t0)

            hyp.inner_test = timed
        c0, timers0 = compile_counters(), compile_timers()
        t0 = time.perf_counter()
        try:
            return (yield)
        finally:
            total = time.perf_counter() - t0
            c1 = compile_counters()
            if inner is not None:
                hyp.inner_test = inner
            tier, target = _tier_and_target(item)
            rec = {
                "test": item.nodeid,
                "tier": tier,
                "target": target,
                "examples_s": times if inner is not None else [total],
                "call_s": total,
                "start_s": round(t0 - self.configured, 3),  # when the call began, from configure
                "hypothesis": inner is not None,
                "compile": {k: c1[k] - c0[k] for k in COMPILE_KEYS + PHASE_KEYS},
            }
            timers = top_timers(timers0, compile_timers())
            if timers:
                rec["compile_timers"] = timers
            # An xdist worker spools at once (one stopped by a time bound never reaches its session's end).
            # Asked of the config, not the environment: a pytest run inside a worker's test inherits
            # PYTEST_XDIST_WORKER but is no worker.
            worker = getattr(self.config, "workerinput", {}).get("workerid", "")
            if not (worker and report.spool({**rec, "worker": worker}, SPOOL_STREAM)):
                self.costs.records.append(rec)

    @pytest.hookimpl(wrapper=True, trylast=True)  # also when another is interrupted, as plugins.report's
    def pytest_sessionfinish(self, session: pytest.Session) -> Any:
        try:
            return (yield)
        finally:
            self._write()

    def _write(self) -> None:
        if hasattr(self.config, "workeroutput"):
            return
        run = report.run_of(self.config)
        if run is not None and run.spool is not None:  # the workers' records
            self.costs.records.extend(report.read_spool(run.spool, SPOOL_STREAM))
        records = self.costs.records
        if not records:
            return
        path = report.report_path("costs.json", "GEMMA2_REGRESS_COSTS")
        try:
            payload = {"rows": summarize(records), "compile": compile_split(records), "tests": records}
            write_json_atomic(path, payload)
            self.costs.path = path
        except OSError as exc:
            self.costs.error = str(exc)

    @pytest.hookimpl(tryfirst=True)  # the cost table first, then the report's (plugins.report)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workeroutput") or not self.costs.records:
            return
        tr = terminalreporter
        tr.section("gemma2-regress: suite cost per tier/target (first = first example in a process: compile)")
        tr.write_line(
            f"{'tier':5} {'target':52} {'tests':>5} {'examples':>8} {'first s':>8} {'ms/example':>10} {'total s':>8}"
        )
        for r in summarize(self.costs.records):
            per = f"{r['ms_per_example']:.1f}" if r["ms_per_example"] is not None else "-"
            tr.write_line(
                f"{r['tier'][:5]:5} {r['target'][:52]:52} {r['tests']:>5} {r['examples']:>8} "
                f"{r['first_s']:>8.2f} {per:>10} {r['total_s']:>8.1f}"
            )
        tr.write_line(
            "compile / run split over every worker: " + split_line(compile_split(self.costs.records))
        )
        for line in (misses_line(self.costs.records), start_line(self.costs.records)):
            if line:
                tr.write_line(line)
        if self.costs.path:
            tr.write_line(f"suite cost JSON: {self.costs.path}")
        elif self.costs.error:
            tr.write_line(f"suite cost JSON not written ({self.costs.error})")


def costs_of(config: pytest.Config) -> Costs | None:
    """This session's ``Costs`` (None where the plugin is not loaded)."""
    return config.stash.get(COSTS, None)


def pytest_configure(config: pytest.Config) -> None:
    costs = Costs()
    config.stash[COSTS] = costs
    config.pluginmanager.register(_Plugin(costs, config), "gemma2-costs")
