"""Bisect Unsloth builds (PyPI releases, a wheelhouse of builds, or commits of a checkout) to the
first bad one, or with ``find_fix`` to the first good one.

Terms: the search runs over candidates oldest first. The *old* state is what the older end shows
(``good`` for a regression, ``bad`` for ``find_fix``), the *new* state what the newer end shows;
the answer is the first candidate in the new state. Both ends are tested first (a wrong-way range
is an error that says so); then binary search, or k-ary with k GPUs (k candidates at once, one
per GPU via ``CUDA_VISIBLE_DEVICES``). A candidate that cannot be built or imported is ``skip``:
the next one nearest the middle is tried instead, and if only skips remain the answer is a range.

Test runs for N candidates: 2 (the ends) + ceil(log2(N - 1)) without skips, i.e. at most
ceil(log2 N) + 2. Each step's result is saved (atomically) in ``<workdir>/state.json`` and the
same command resumes from it, unless the suite's code or packages changed since (``builds.subject``).
The answer is written as ``result.json`` and as a ready-to-paste issue text (``result.md``); ``script_exit`` maps one verdict to ``git bisect run``'s exit codes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from gemma2_regress.atomic import write_json_atomic, write_text_atomic
from gemma2_regress.builds import envs, runner
from gemma2_regress.builds.runner import RunResult, Selection
from gemma2_regress.builds.sources import BisectError, Candidate, Source
from gemma2_regress.builds.subject import subject_digest
from gemma2_regress.progress import Progress

COMPARE = "https://github.com/unslothai/unsloth/compare/{a}...{b}"
EXIT_FOUND, EXIT_ERROR, EXIT_AMBIGUOUS = 0, 2, 3
SCRIPT_GOOD, SCRIPT_BAD, SCRIPT_SKIP = 0, 1, 125  # git bisect run


@dataclasses.dataclass
class Step:
    """One tested candidate: verdict, why, times, cache hit, the deciding signature."""

    n: int
    candidate: str
    index: int
    status: str  # good | bad | skip
    state: str  # old | new | skip (relative to the search direction)
    signature: str
    reason: str
    install_s: float
    test_s: float
    cache_hit: bool
    gpu: str | None = None
    falsifying: str | None = None
    log: str = ""
    failing_tests: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Bisect:
    """A configured bisection. ``run()`` returns the result dict (also written to ``workdir``).

    As in mozregression, the search knows neither where builds come from nor how one is tested: it
    is given a build source (``builds.sources``) and a test runner (``builds.runner.run`` unless
    ``test_runner`` names another)."""

    source: Source
    good: str
    bad: str
    selection: Selection
    cache: envs.EnvCache
    workdir: Path
    cwd: Path = dataclasses.field(default_factory=Path.cwd)
    find_fix: bool = False
    gpus: list[str] = dataclasses.field(default_factory=list)
    log: Callable[[str], None] = lambda s: print(s, flush=True)
    # (env, selection, step folder, *, cwd, extra_env, gpu, on_progress) -> RunResult; None: builds.runner.run
    test_runner: Callable[..., RunResult] | None = None
    _search: Progress | None = dataclasses.field(default=None, init=False, repr=False)  # steps / bound
    _resumed: int = dataclasses.field(default=0, init=False, repr=False)  # steps already done on resume

    # -- candidates and state ------------------------------------------------------------------
    def range(self) -> list[Candidate]:
        old_spec, new_spec = (self.bad, self.good) if self.find_fix else (self.good, self.bad)
        old, new = self.source.pick(old_spec), self.source.pick(new_spec)
        cands = self.source.candidates()
        i, j = cands.index(old), cands.index(new)
        if i >= j:
            want = "--bad older than --good" if self.find_fix else "--good older than --bad"
            hint = (
                "swap them, or drop --find-fix to find a regression"
                if self.find_fix
                else "swap them, or pass --find-fix to find a fix"
            )
            if i == j:
                hint = "pass two different builds"
            raise BisectError(
                f"wrong-way range: {old_spec} is {'the same build as' if i == j else 'newer than'} {new_spec}; "
                f"a {'fix search' if self.find_fix else 'regression search'} needs {want}: {hint}"
            )
        return cands[i : j + 1]

    def _state_path(self) -> Path:
        return self.workdir / "state.json"

    @functools.cached_property
    def _subject(self) -> str:
        """What the steps' verdicts depend on besides the build (``builds.subject``), once per bisect."""
        return subject_digest(self.cwd, self.workdir)

    def _load(self, cands: list[Candidate]) -> dict[str, Step]:
        p = self._state_path()
        if not p.exists():
            return {}
        st = json.loads(p.read_text())
        if st.get("candidates") != [c.ref for c in cands] or st.get("selection") != dataclasses.asdict(
            self.selection
        ):
            raise BisectError(f"{p} belongs to another bisect; pass another --workdir or delete it")
        if st.get("subject") != self._subject:
            raise BisectError(
                f"{p} holds steps tested with other code or packages (the suite's tree or the stack changed "
                "since): pass --fresh to test every step again, or --workdir to keep those steps apart"
            )
        steps = {k: Step(**v) for k, v in st.get("steps", {}).items()}
        if steps:
            self.log(f"resuming from {p}: {len(steps)} step(s) already done")
        return steps

    def _save(self, cands: list[Candidate], steps: dict[str, Step]) -> None:
        write_json_atomic(
            self._state_path(),
            {
                "candidates": [c.ref for c in cands],
                "selection": dataclasses.asdict(self.selection),
                "subject": self._subject,
                "find_fix": self.find_fix,
                "steps": {k: dataclasses.asdict(v) for k, v in steps.items()},
            },
        )

    # -- one candidate ----------------------------------------------------------------------------
    def evaluate(self, cand: Candidate, index: int, n: int, gpu: str | None) -> Step:
        """Build (or reuse) the candidate's environment and run the selection there."""
        t0 = time.time()
        try:
            env, hit, _ = self.cache.get(self.source.key(cand), lambda d: self.source.build(cand, d))
        except envs.BuildError as exc:
            return Step(
                n,
                cand.label,
                index,
                "skip",
                "skip",
                "uninstallable",
                str(exc)[:400],
                round(time.time() - t0, 1),
                0.0,
                False,
                gpu,
            )
        install_s = round(time.time() - t0, 1)
        extra = {}
        if "HYPOTHESIS_PROFILE" not in os.environ:
            extra["HYPOTHESIS_PROFILE"] = "ci"  # deterministic draws: every candidate sees the same examples
        run_tests = self.test_runner or runner.run
        tests = Progress(f"step {n} {cand.label}: tests", 0)

        def tests_progress(state: dict) -> None:  # the step's pytest run as it goes: tests done / total
            tests.total = int(state["total"])
            tests.update(int(state["done"]), f"{state.get('failed', 0)} failed so far")

        res: RunResult = run_tests(
            env,
            self.selection,
            self.workdir / "steps" / _safe(cand.label),
            cwd=self.cwd,
            extra_env=extra,
            gpu=gpu,
            on_progress=tests_progress,
        )
        tests.clear()
        state = (
            "skip" if res.status == "skip" else ("new" if (res.status == "bad") != self.find_fix else "old")
        )
        failing = [t.nodeid for t in res.tests if t.failed][:20]
        return Step(
            n,
            cand.label,
            index,
            res.status,
            state,
            res.signature,
            res.reason,
            install_s,
            round(res.test_s, 1),
            hit,
            gpu,
            res.falsifying,
            res.log,
            failing,
        )

    def _batch(
        self, todo: list[tuple[int, Candidate]], steps: dict[str, Step], cands: list[Candidate]
    ) -> None:
        """Evaluate candidates not yet in ``steps``, one per GPU at a time (or one at a time)."""
        todo = [(i, c) for i, c in todo if c.label not in steps]
        if not todo:
            return
        slots = self.gpus or [None]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
            futs = {}
            for k, (i, c) in enumerate(todo):
                futs[pool.submit(self.evaluate, c, i, len(steps) + k + 1, slots[k % len(slots)])] = c
            for fut in concurrent.futures.as_completed(futs):
                st = fut.result()
                steps[st.candidate] = st
                self._save(cands, steps)
                if self._search is not None:
                    self._search.clear()
                self.log(_progress(st, self.find_fix))
                if self._search is not None:  # steps done / the bound, and the time left
                    self._search.update(len([s for s in steps.values() if s.n > self._resumed]))

    def run(self) -> dict:
        """Check both ends, then search; write result.json and result.md into the workdir."""
        t_start = time.time()
        cands = self.range()  # a bad range fails here, before the workdir exists
        steps = self._load(cands)
        self.workdir.mkdir(parents=True, exist_ok=True)
        n = len(cands)
        bound = 2 + math.ceil(math.log2(max(n - 1, 1)))
        self.log(
            f"bisect: {n} candidates {cands[0].label} .. {cands[-1].label}; {self.selection.describe()}; "
            f"{'find-fix' if self.find_fix else 'regression'}; at most {bound} test runs without skips"
        )
        self._resumed = max((s.n for s in steps.values()), default=0)
        self._search = Progress("bisect: test runs", max(bound - self._resumed, 0), live=False, every_s=0.0)
        self._batch([(0, cands[0]), (n - 1, cands[-1])], steps, cands)
        self._check_ends(cands, steps)
        lo, hi = 0, n - 1  # lo in the old state, hi in the new state
        while True:
            lo, hi = _narrow(cands, steps, lo, hi)
            probes = _probes(cands, steps, lo, hi, max(1, len(self.gpus)))
            if not probes:
                break
            self.log(f"  range {cands[lo].label} .. {cands[hi].label}: {hi - lo - 1} untested between")
            self._batch([(i, cands[i]) for i in probes], steps, cands)
        result = self._result(cands, steps, lo, hi, time.time() - t_start)
        write_json_atomic(self.workdir / "result.json", result)
        write_text_atomic(self.workdir / "result.md", result["issue_text"])
        return result

    def _check_ends(self, cands: list[Candidate], steps: dict[str, Step]) -> None:
        a, b = steps[cands[0].label], steps[cands[-1].label]
        names = ("--bad", "--good") if self.find_fix else ("--good", "--bad")
        for end, name in ((a, names[0]), (b, names[1])):
            if end.status == "skip":
                raise BisectError(
                    f"the {name} end {end.candidate} cannot be tested ({end.reason}); pick another {name}"
                )
        if a.state == "new" and b.state == "old":
            raise BisectError(
                f"wrong-way range: {names[0]} {a.candidate} is {a.status} and {names[1]} {b.candidate} is {b.status}; "
                + ("drop --find-fix" if self.find_fix else "this looks like a fix: pass --find-fix")
            )
        if a.state == b.state:
            what = a.status
            raise BisectError(
                f"both ends are {what} ({a.candidate}: {a.reason}; {b.candidate}: {b.reason}); "
                f"move {names[0] if a.state == 'new' else names[1]} so the two ends differ"
            )

    def _result(self, cands: list[Candidate], steps: dict[str, Step], lo: int, hi: int, wall: float) -> dict:
        ordered = sorted(steps.values(), key=lambda s: s.n)
        first, last_old = cands[hi], cands[lo]
        ambiguous = [c.label for c in cands[lo + 1 : hi]]
        a, b = last_old.ref, first.ref
        link = COMPARE.format(a=a, b=b)
        # the step that shows the failure: the first bad (regression) or the last bad (find-fix)
        deciding = steps.get(last_old.label if self.find_fix else first.label)
        what = "first good (fixed)" if self.find_fix else "first bad"
        out = {
            "mode": "find-fix" if self.find_fix else "regression",
            "source": self.source.name,
            "selection": dataclasses.asdict(self.selection),
            "candidates": len(cands),
            "first_new": first.label,
            "last_old": last_old.label,
            "ambiguous": ambiguous,
            "answer": f"{what}: {first.label}"
            if not ambiguous
            else f"{what} is one of {', '.join([*ambiguous, first.label])} (the others could not be tested)",
            "steps": [dataclasses.asdict(s) for s in ordered],
            "test_runs": len(ordered),
            "bound": 2 + math.ceil(math.log2(max(len(cands) - 1, 1))),
            "compare": link,
            "falsifying_example": deciding.falsifying if deciding and deciding.status == "bad" else None,
            "install_s": round(sum(s.install_s for s in ordered), 1),  # all steps, resumed ones included
            "test_s": round(sum(s.test_s for s in ordered), 1),
            "wall_s": round(wall, 1),  # this invocation only (a resumed run does not redo its steps)
            "exit": EXIT_AMBIGUOUS if ambiguous else EXIT_FOUND,
        }
        out["issue_text"] = issue_text(out, deciding)
        return out


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-+" else "_" for ch in s)


def _narrow(cands: list[Candidate], steps: dict[str, Step], lo: int, hi: int) -> tuple[int, int]:
    """Tightest (old, new) pair: the first tested "new" index after the last "old" one."""
    states = {i: steps[c.label].state for i, c in enumerate(cands) if c.label in steps}
    new = min((i for i, s in states.items() if s == "new" and lo < i <= hi), default=hi)
    old = max((i for i, s in states.items() if s == "old" and lo <= i < new), default=lo)
    return old, new


def _probes(cands: list[Candidate], steps: dict[str, Step], lo: int, hi: int, k: int) -> list[int]:
    """Up to ``k`` untested indices splitting (lo, hi) into k+1 near-equal parts; skips are avoided
    by taking the untested index nearest each ideal point."""
    free = [i for i in range(lo + 1, hi) if cands[i].label not in steps]
    if not free:
        return []
    picks: list[int] = []
    for j in range(1, k + 1):
        ideal = lo + (hi - lo) * j / (k + 1)
        best = min((i for i in free if i not in picks), key=lambda i: (abs(i - ideal), i), default=None)
        if best is not None:
            picks.append(best)
    return sorted(picks)


def _progress(st: Step, find_fix: bool) -> str:
    hit = "cache hit" if st.cache_hit else "built"
    gpu = f" gpu {st.gpu}" if st.gpu is not None else ""
    return (
        f"[step {st.n}] {st.candidate}: {st.status.upper()} ({st.signature}) install {st.install_s:.1f} s ({hit}) "
        f"test {st.test_s:.1f} s{gpu} - {st.reason[:160]}"
    )


def issue_text(res: dict, failing: Step | None) -> str:
    """A ready-to-paste GitHub issue body for the result: the answer, the compare link, the selection, the
    verdict and failing tests of the deciding step, Hypothesis's minimal example, one table row per step
    (verdict, signature, install and test seconds, cache) and the totals over all steps."""
    sel = res["selection"]
    args = shlex.join(sel["pytest_args"])  # copy-pasteable: -k "a and b" keeps its quotes
    lines = [
        f"### {'Fixed' if res['mode'] == 'find-fix' else 'Regression'} in unsloth {res['first_new']} "
        f"(last {'bad' if res['mode'] == 'find-fix' else 'good'}: {res['last_old']})",
        "",
        f"- Answer: {res['answer']}",
        f"- Changes: {res['compare']}",
        f"- Selection: `pytest {args}`" + (f" (bad = `{sel['signature']}`)" if sel.get("signature") else ""),
        f"- Bisected with gemma2-regress over {res['candidates']} {res['source']} candidates in {res['test_runs']} test runs",
    ]
    tested = {v: [s["candidate"] for s in res["steps"] if s["status"] == v] for v in ("bad", "good", "skip")}
    lines += [f"- Tested {v}: {', '.join(c) if c else 'none'}" for v, c in tested.items() if c or v != "skip"]
    if failing is not None:
        lines += [f"- Verdict at {failing.candidate}: `{failing.signature}` ({failing.reason})"]
        if failing.failing_tests:
            lines += [
                f"- Failing tests at {failing.candidate}:",
                *[f"  - `{t}`" for t in failing.failing_tests[:10]],
            ]
    if res.get("falsifying_example"):
        lines += ["", "Minimal failing example (Hypothesis):", "```", res["falsifying_example"], "```"]
    lines += [
        "",
        "| step | candidate | verdict | signature | install s | test s | cache |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in res["steps"]:
        lines.append(
            f"| {s['n']} | {s['candidate']} | {s['status']} | `{s['signature']}` | {s['install_s']} | "
            f"{s['test_s']} | {'hit' if s['cache_hit'] else 'built'} |"
        )
    lines += [
        "",
        f"{res['test_runs']} test runs (bound {res['bound']}): install {res['install_s']} s and tests "
        f"{res['test_s']} s in all steps; this run's wall time {res['wall_s']} s.",
    ]
    return "\n".join(lines) + "\n"


def workdir_for(source: Source, good: str, bad: str, sel: Selection, find_fix: bool, root: Path) -> Path:
    """The default work directory: one per distinct command, so re-running it resumes; a forced torch or
    another base environment (``source.identity()``) is another command."""
    key = json.dumps([source.identity(), good, bad, sel.pytest_args, sel.signature, find_fix])
    return root / f"{_safe(good)}..{_safe(bad)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def script_exit(status: str, find_fix: bool) -> int:
    """``git bisect run`` exit code: 0 old ("good" term), 1 new ("bad" term), 125 skip."""
    if status == "skip":
        return SCRIPT_SKIP
    new = (status == "bad") != find_fix
    return SCRIPT_BAD if new else SCRIPT_GOOD


def clear(workdir: Path) -> None:
    """Forget a bisect's saved state (start over)."""
    shutil.rmtree(workdir, ignore_errors=True)
