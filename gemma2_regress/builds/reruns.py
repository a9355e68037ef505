"""The same pytest selection run many times, per test tallied: ``portability`` and ``flakes``.

A verdict means something only if it is the same on every machine and every run. Two commands prove
that on one machine:

``portability``
    runs the selection once per CPU *setting*: the kernels PyTorch, MKL and oneDNN dispatch to
    (``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``) and
    the thread count. Each sums in another order, as another CPU would. Settings the CPU cannot honour
    are reported ``n/a``, as are settings under which torch.compile itself computes wrong results (a
    canary, ``compile_check``: there every compiled kernel's verdict would blame Unsloth for a torch
    fault). Exit 0 when every setting that ran is green.
``flakes``
    runs the selection ``--runs N`` times as it is (plus, with ``--settings``, once per setting) and
    prints per test how often it passed. Exit 1 when a test both passed and failed (a flake: a bug),
    3 when tests failed every time and none flaked (a real red), 0 otherwise.

Both run pytest through ``builds.runner.run`` (the suite's one pytest runner, which reads each test's
outcome from the run's summary JSON) in this interpreter, under the deterministic ``ci`` Hypothesis
profile by default, so every run draws the same examples. State is kept per finished run in
``<out>/state.json`` (written atomically): the same command again resumes, ``--fresh`` starts over, and so
does a command whose code or packages changed since (``builds.subject``: a resumed verdict is one of this code). ``python -m gemma2_regress.builds.reruns portability|flakes --help``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gemma2_regress import compile_check, records, suite
from gemma2_regress.argcheck import OneLineParser, bounded, unwritable
from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.builds.envs import Env
from gemma2_regress.builds.runner import Selection, run
from gemma2_regress.builds.subject import subject_digest
from gemma2_regress.plugins import compile_canary
from gemma2_regress.plugins.vec_isa import cpu_flags

# A CPU capability an x86 setting needs, as /proc/cpuinfo spells its flags.
AVX2 = ("avx2", "fma")
AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One way to run: environment variables, and the CPU flags they need (``n/a`` without them)."""

    name: str
    env: dict[str, str]
    needs: tuple[str, ...] = ()
    what: str = ""


SETTINGS = (
    Setting("as-is", {}, (), "this machine's own choices"),
    Setting("aten-default", {"ATEN_CPU_CAPABILITY": "default"}, (), "PyTorch's scalar kernels"),
    Setting("aten-avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, AVX2, "PyTorch's AVX2 kernels"),
    Setting("aten-avx512", {"ATEN_CPU_CAPABILITY": "avx512"}, AVX512, "PyTorch's AVX-512 kernels"),
    Setting("mkl-cbwr-compatible", {"MKL_CBWR": "COMPATIBLE"}, (), "MKL's reproducible SSE2 paths"),
    Setting("mkl-avx2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, AVX2, "MKL capped at AVX2"),
    Setting("mkl-sse4_2", {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, ("sse4_2",), "MKL capped at SSE4.2"),
    Setting("onednn-avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, AVX2, "oneDNN (bf16/fp16 matmuls) capped at AVX2"),
    Setting("threads-1", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, (), "one thread per process"),
    Setting("threads-2", {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, (), "two threads per process"),
)
BY_NAME = {s.name: s for s in SETTINGS}
# What .ci/run affords: one setting per kind of change (scalar kernels, BLAS order, threads).
QUICK = ("aten-default", "mkl-cbwr-compatible", "threads-1")
WORKERS = ("-n", os.environ.get("GEMMA2_REGRESS_WORKERS", "2"), "--dist", "loadgroup")  # as `nox -s cpu`
DEFAULT_SELECTION = {
    "portability": ("tests/oracle", "tests/kernel", "-m", "not gpu", *WORKERS),  # the arithmetic's tests
    "flakes": ("-m", "not gpu", *WORKERS),  # the CPU tier
}


def unavailable(setting: Setting, flags: set[str] | None) -> str | None:
    """Why ``setting`` cannot run on a CPU with ``flags`` (None: it can)."""
    if not setting.needs:
        return None
    if flags is None:
        return "CPU flags unreadable (not Linux x86)"
    missing = [f for f in setting.needs if f not in flags]
    return f"CPU lacks {', '.join(missing)}" if missing else None


def setting_env(setting: Setting) -> dict[str, str]:
    """``setting``'s variables, with Inductor's cache folder for it where it runs under ``ATEN_CPU_CAPABILITY``
    (its own or this process's): a subfolder of this process's (``suite.compile_cache_for``), for its canary
    and its run alike."""
    environ = {**os.environ, **setting.env}
    if not environ.get(suite.ATEN_CAPABILITY_ENV):
        return dict(setting.env)
    base = records.cache_folder()
    return {**setting.env, suite.COMPILE_CACHE_ENV: str(suite.compile_cache_for(base, environ))}


def choose(names: Sequence[str]) -> list[Setting]:
    """Settings by name; ``all`` and ``quick`` stand for ``SETTINGS`` and ``QUICK``."""
    out: list[Setting] = []
    for name in names:
        group = SETTINGS if name == "all" else [BY_NAME[n] for n in QUICK] if name == "quick" else None
        if group is None and name not in BY_NAME:
            raise ValueError(f"unknown setting {name!r}; known: all, quick, {', '.join(BY_NAME)}")
        out += [s for s in group or [BY_NAME[name]] if s not in out]
    return out


@dataclasses.dataclass
class Plan:
    """The runs to make: (label, setting) in order, the pytest selection, the Hypothesis profile."""

    runs: list[tuple[str, Setting]]
    pytest_args: list[str]
    profile: str
    timeout_s: float
    subject: str = ""  # what the verdicts depend on besides the plan (``builds.subject``)

    def key(self) -> str:
        text = json.dumps([[lbl, s.env] for lbl, s in self.runs] + [self.pytest_args, self.profile])
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def execute(
    plan: Plan, out: Path, *, fresh: bool = False, log: Callable[[str], None] = print
) -> dict[str, dict[str, str]]:
    """Run the plan (resuming a finished-run state for the same plan in ``out``); return
    {run label: {test node id: outcome}} with outcome ``passed | failed | skipped | xfailed`` or ``error: <why>``
    for a run that produced no verdicts (its whole reason under the key ``""``)."""
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() and not fresh else {}
    other = None
    if state.get("key") != plan.key():
        other = "another plan's runs"
    elif state.get("subject", "") != plan.subject:
        other = "runs of other code or packages (the tree or the stack changed since)"
    if other:
        if state:
            log(f"{state_path}: {other}; starting over")
        shutil.rmtree(out, ignore_errors=True)
        state = {"key": plan.key(), "subject": plan.subject, "runs": {}}
    env = Env(sys.executable)
    flags = cpu_flags()
    t_start, done_now = time.time(), 0
    canary: dict[str, str | None] = {}  # per setting: flakes repeats one setting --runs times
    for i, (label, setting) in enumerate(plan.runs, 1):
        if label in state["runs"]:
            log(f"[{i}/{len(plan.runs)}] {label}: done earlier (resumed)")
            continue
        why = unavailable(setting, flags)
        env_of_setting = setting_env(setting)  # its canary and its run alike
        if not why:
            if setting.name not in canary:
                canary[setting.name] = compile_check.canary(env_of_setting)
            why = canary[setting.name]
        if why:
            state["runs"][label] = {"": f"n/a: {why}"}
            log(f"[{i}/{len(plan.runs)}] {label}: n/a: {why}")
        else:
            sel = Selection(list(plan.pytest_args), timeout_s=plan.timeout_s)
            extra = {
                **env_of_setting,
                "HYPOTHESIS_PROFILE": plan.profile,
                compile_canary.OFF_ENV: "1",
            }  # checked above
            t0 = time.time()
            res = run(env, sel, out / label, cwd=Path.cwd(), extra_env=extra)
            # xfailed stays itself here (the recorded bugs), where the runner's plain outcome folds it into skipped
            tests = {t.nodeid: "xfailed" if t.outcome == "xfailed" else t.plain for t in res.tests}
            state["runs"][label] = tests or {"": f"error: {res.reason}"}
            done_now += 1
            counts = collections.Counter(tests.values())
            left = len(plan.runs) - i
            eta = (time.time() - t_start) / done_now * left
            log(
                f"[{i}/{len(plan.runs)}] {label}: "
                + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or res.reason)
                + f" in {time.time() - t0:.0f} s"
                + (f"; about {eta / 60:.0f} min left" if left else "")
            )
        write_json_atomic(state_path, state)
    return state["runs"]


def tally(runs: dict[str, dict[str, str]]) -> dict[str, collections.Counter]:
    """Per test, how many runs gave each outcome (runs without verdicts are left out)."""
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for tests in runs.values():
        for node, outcome in tests.items():
            if node:
                per[node][outcome] += 1
    return dict(per)


def portability_lines(runs: dict[str, dict[str, str]]) -> tuple[list[str], bool]:
    """One line per setting (passed / failed / skipped, or why it did not run) and whether all are green."""
    lines, green = [], True
    width = max(len(label) for label in runs)
    for label, tests in runs.items():
        if "" in tests:
            lines.append(f"{label:{width}}  {tests['']}")
            green &= tests[""].startswith("n/a")
            continue
        c = collections.Counter(tests.values())
        failed = sorted(n for n, o in tests.items() if o == "failed")
        green &= not failed
        lines.append(
            f"{label:{width}}  {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
            + (f", {c['xfailed']} xfailed" if c["xfailed"] else "")
            + (f"  FAILED: {', '.join(failed[:3])}" + (" ..." if len(failed) > 3 else "") if failed else "")
        )
    return lines, green


def census_lines(runs: dict[str, dict[str, str]]) -> tuple[list[str], int]:
    """The flake census: every test that did not pass every time, with its counts; and the exit code."""
    per = tally(runs)
    n_runs = sum(1 for t in runs.values() if "" not in t)
    # An xfailed run is the expected outcome of a recorded bug: beside a failed run it is a flake too.
    flaky = sorted(n for n, c in per.items() if (c["passed"] or c["xfailed"]) and c["failed"])
    stable = sorted(n for n, c in per.items() if c["failed"] and not (c["passed"] or c["xfailed"]))
    lines = [f"{len(per)} tests over {n_runs} runs: {len(flaky)} flaky, {len(stable)} failed every run"]
    for n in flaky + stable:
        c = per[n]
        tag = "FLAKY " if n in flaky else "FAILED"
        lines.append(f"  {tag} passed {c['passed']}/{sum(c.values())}: {n}")
    skipped_always = sum(1 for c in per.values() if c["skipped"] == sum(c.values()))
    xfailed_always = sum(1 for c in per.values() if c["xfailed"] == sum(c.values()))
    lines.append(
        f"passed in every run: {sum(1 for c in per.values() if c['passed'] == sum(c.values()))}; "
        f"skipped in every run: {skipped_always}; xfailed in every run: {xfailed_always}"
    )
    for label, tests in runs.items():
        if "" in tests:
            lines.append(f"  run {label}: {tests['']}")
    return lines, 1 if flaky else 3 if stable else 0


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m gemma2_regress.builds.reruns", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, helptext in (
        ("portability", "the selection once per CPU setting; green on every one"),
        ("flakes", "the selection --runs times; a test that both passed and failed is a flake"),
    ):
        s = sub.add_parser(name, help=helptext, description=helptext)
        if name == "flakes":
            s.add_argument(
                "--runs", type=bounded(int, at_least=1), default=3, help="repeats as-is (default %(default)s)"
            )
        default = "all" if name == "portability" else ""
        s.add_argument(
            "--settings",
            default=default,
            help="comma list of settings, 'quick' or 'all' "
            + (
                "(default all)"
                if name == "portability"
                else "run once each besides the repeats (default none)"
            ),
        )
        s.add_argument("--profile", default="ci", help="Hypothesis profile of every run (default ci)")
        s.add_argument(
            "--timeout",
            type=bounded(float, above=0),
            default=3600.0,
            help="seconds per pytest run (default %(default)s)",
        )
        s.add_argument(
            "--out", default=f"reports/{name}", help="state, logs and the JSON (default %(default)s)"
        )
        s.add_argument("--fresh", action="store_true", help="discard finished runs and start over")
        s.add_argument("--list", action="store_true", help="list the settings and whether this CPU has them")
        s.add_argument(
            "pytest_args", nargs="*", help=f"after --: the selection (default {' '.join(DEFAULT_SELECTION)})"
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.list:
        flags = cpu_flags()
        for s in SETTINGS:
            why = unavailable(s, flags)
            env = " ".join(f"{k}={v}" for k, v in s.env.items()) or "(nothing set)"
            print(f"{s.name:20} {'n/a: ' + why if why else 'ok':28} {env}  {s.what}")
        return 0
    try:
        settings = choose([n.strip() for n in args.settings.split(",") if n.strip()])
    except ValueError as exc:
        p.error(f"--settings: {exc}")
    if args.cmd == "portability" and not settings:
        p.error("--settings: name at least one setting (or 'all')")
    why = unwritable(args.out, folder=True)
    if why:
        p.error(f"--out {args.out}: {why}")
    runs = [(s.name, s) for s in settings]
    if args.cmd == "flakes":
        runs = [(f"run-{i}", BY_NAME["as-is"]) for i in range(1, args.runs + 1)] + runs
    out = Path(args.out)
    plan = Plan(
        runs,
        list(args.pytest_args) or list(DEFAULT_SELECTION[args.cmd]),
        args.profile,
        args.timeout,
        subject_digest(Path.cwd(), out),
    )
    print(
        f"{args.cmd}: {len(runs)} pytest runs of `pytest {shlex.join(plan.pytest_args)}` "
        f"(profile {plan.profile}); state in {out / 'state.json'}",
        flush=True,
    )
    try:
        results = execute(plan, out, fresh=args.fresh, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("\ninterrupted; the same command resumes from the finished runs", file=sys.stderr)
        return 130
    if args.cmd == "portability":
        lines, green = portability_lines(results)
        code = 0 if green else 1
    else:
        lines, code = census_lines(results)
    write_json_atomic(
        out / f"{args.cmd}.json", {"plan": dataclasses.asdict(plan), "runs": results, "exit": code}
    )
    print("\n".join(lines))
    print(
        f"{args.cmd}: {'green' if code == 0 else 'RED'} (exit {code}); per-run logs under {out}/<run>/pytest.log"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
