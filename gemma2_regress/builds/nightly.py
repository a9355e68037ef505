"""The nightly loop: gate the newest build against the last good one, tell stable failures from flaky
ones, bisect the stable ones, and leave an issue text ready to file.

``nightly(...)`` runs, in order:

1. **gate** (``builds.gate``): the selection on both builds, per test ``regression`` / ``new-fail`` / ...;
   a passing gate ends the night (exit 0).
2. **reruns**: each test the gate calls a regression or a new failure runs ``reruns`` more times on the
   candidate (``builds.runner``, the records set aside). A test that failed every time is **stable**; one
   that passed at least once is **flaky** (a bug of the suite or of the build, but no bisect target),
   as transformers' scheduled CI does in ``utils/check_bad_commit.py`` before it bisects.
3. **bisect** (``gemma2-regress bisect``, its one search): between baseline (good) and candidate (bad),
   on the stable tests only, bad meaning the verdict kind the candidate showed (``mismatch``, ``nan``,
   ``crash:<Type>``), when both are PyPI releases or git refs of ``--repo``; otherwise said why not.
4. **report**: ``nightly.json`` and ``nightly.md`` (the issue text: the gate's call, stable and flaky
   tests, the bisect's ``result.md``) in ``out``, both written atomically.

The gate, the test runner and the bisect are passed in (``gate_fn``, ``run_fn``, ``bisect_fn``), as in
mozregression, so the loop itself is tested without network or GPU. Exit: 0 the gate passed, 1 a stable
regression (bisected or not), 5 only flaky failures, 2 bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gemma2_regress import suite
from gemma2_regress.atomic import write_json_atomic, write_text_atomic
from gemma2_regress.builds import envs, gate, runner
from gemma2_regress.builds.sources import check_spec, environment

EXIT_PASS, EXIT_STABLE, EXIT_FLAKY = 0, 1, 5
FAILING_CALLS = ("regression", "new-fail")


def bisectable(candidate: str, baseline: str, repo: str | None) -> str | None:
    """Why the two builds cannot be bisected between (None if they can): two PyPI releases, or a git ref
    of ``repo`` as the candidate (the baseline then names a ref of it too, such as a release's tag)."""
    c = check_spec(candidate, "candidate", repo).kind
    b = check_spec(baseline, "baseline").kind
    if c == b == "release" or (c == "git" and repo):
        return None
    return f"a bisect needs two releases, or a git candidate of --repo; here the candidate is a {c}, the baseline a {b}"


def nightly(
    candidate: str,
    baseline: str,
    *,
    out: Path,
    cache: envs.EnvCache,
    cwd: Path,
    pytest_args: list[str],
    tiers: list[str] | None = None,
    repo: str | None = None,
    torch: str | None = None,
    installer: str = "auto",
    reruns: int = 3,
    timeout_s: float = 7200.0,
    gate_fn: Callable[..., dict] = gate.gate,
    run_fn: Callable[..., runner.RunResult] = runner.run,
    bisect_fn: Callable[[list[str]], int] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The loop above; returns the result (also ``out/nightly.json``), with ``exit`` its exit status."""
    g = gate_fn(
        candidate,
        baseline,
        out=out / "gate",
        cache=cache,
        cwd=cwd,
        pytest_args=pytest_args,
        tiers=tiers,
        repo=repo,
        torch=torch,
        installer=installer,
        perf=False,
        timeout_s=timeout_s,
        log=log,
    )
    result: dict = {
        "candidate": g["candidate"],
        "baseline": g["baseline"],
        # what the two sides resolved to (a version, a commit's sha): the bisect takes these, not the labels
        "candidate_ref": g.get("candidate_ref", g["candidate"]),
        "baseline_ref": g.get("baseline_ref", g["baseline"]),
        "gate": {"pass": g["pass"], "why": g["why"]},
    }
    failing = {tier: [r for r in t["rows"] if r["call"] in FAILING_CALLS] for tier, t in g["tiers"].items()}
    result["stable"], result["flaky"] = [], []
    if g["pass"] or not any(failing.values()):
        result["exit"] = EXIT_PASS if g["pass"] else EXIT_STABLE  # a gate that failed on nothing to rerun
        return _finish(result, out, log)

    c_env = _candidate_env(candidate, baseline, cache, repo, torch, installer)
    for tier, rows in failing.items():
        if not rows:
            continue
        nodes = [r["test"] for r in rows]
        fails = {n: 0 for n in nodes}
        for k in range(reruns):
            sel = runner.Selection(
                [*nodes, "-m", suite.TIER_MARKS[tier]], timeout_s=timeout_s, known_issues=False
            )
            extra = {"HYPOTHESIS_PROFILE": suite.PROFILES[tier]}
            if tier == "gpu":  # as the gate ran it: every visible GPU
                extra["GEMMA2_REGRESS_GPUS"] = str(gate.cuda_devices(c_env))
            res = run_fn(c_env, sel, out / "reruns" / tier / f"run{k + 1}", cwd=cwd, extra_env=extra)
            outcome = {t.nodeid: t for t in res.tests}
            for n in nodes:
                fails[n] += n not in outcome or outcome[n].failed
            log(
                f"nightly: {tier} rerun {k + 1}/{reruns}: {sum(1 for n in nodes if n in outcome and outcome[n].failed)} of {len(nodes)} failed"
            )
        for r in rows:
            entry = {
                "tier": tier,
                "test": r["test"],
                "verdict": r["candidate"],
                "failed": fails[r["test"]],
                "of": reruns,
            }
            result["stable" if fails[r["test"]] == reruns else "flaky"].append(entry)

    result["bisect"] = None
    if result["stable"]:
        why = bisectable(candidate, baseline, repo)
        if why is not None:
            result["bisect"] = {"status": "not run", "why": why}
        else:
            kind = _signature(result["stable"][0]["verdict"])
            argv = [  # the builds as the gate resolved them ("latest" -> its version)
                "--good",
                result["baseline_ref"],
                "--bad",
                result["candidate_ref"],
                "--signature",
                kind,
                "--workdir",
                str(out / "bisect"),
            ]
            # A git candidate's commits are laid over the baseline's environment, as the gate laid the candidate.
            argv += ["--repo", repo, "--base", result["baseline_ref"]] if repo else []
            argv += ["--torch", torch] if torch else []
            argv += ["--", *sorted({s["test"] for s in result["stable"]})]
            code = (bisect_fn or _bisect_cli)(argv)
            md = out / "bisect" / "result.md"
            result["bisect"] = {
                "status": {0: "found", 3: "range"}.get(code, f"exit {code}"),
                "argv": argv,
                "result_md": md.read_text() if md.exists() else None,
            }
    result["exit"] = EXIT_STABLE if result["stable"] else EXIT_FLAKY
    return _finish(result, out, log)


def _candidate_env(candidate, baseline, cache, repo, torch, installer) -> envs.Env:
    """The candidate's environment as the gate built it (a cache hit): laid over the baseline's where
    the candidate is a wheel or a git ref."""
    base_env, _, _ = environment(check_spec(baseline, "baseline"), cache, torch=torch, installer=installer)
    env, _, _ = environment(
        check_spec(candidate, "candidate", repo),
        cache,
        base=base_env,
        repo=repo,
        torch=torch,
        installer=installer,
    )
    return env


def _signature(verdict: str | None) -> str:
    """What bad means for the bisect: the candidate's verdict kind (``crash:Type``, ``mismatch``, ``nan``)."""
    if not verdict or verdict in ("ok", "skipped"):
        return "bad"
    return verdict.split("@")[0]


def _bisect_cli(argv: list[str]) -> int:
    from gemma2_regress import cli

    return cli.main(["bisect", *argv])


def issue_text(result: dict) -> str:
    """``nightly.md``: what a maintainer files upstream (or reads in the job summary)."""
    lines = [
        f"### Nightly: unsloth {result['candidate']} against {result['baseline']}",
        "",
        f"- Gate: {'PASS' if result['gate']['pass'] else 'FAIL'} ({result['gate']['why']})",
    ]
    for kind, title in (
        ("stable", "Stable failures (failed every rerun)"),
        ("flaky", "Flaky (passed on a rerun: not bisected)"),
    ):
        if result.get(kind):
            lines += ["", f"#### {title}", "", "| tier | test | verdict | failed |", "|---|---|---|---|"]
            lines += [
                f"| {e['tier']} | `{e['test']}` | `{e['verdict']}` | {e['failed']} of {e['of']} |"
                for e in result[kind]
            ]
    b = result.get("bisect")
    if b:
        lines += ["", "#### Bisect", ""]
        lines += (
            [b["result_md"]] if b.get("result_md") else [f"{b['status']}: {b.get('why', '')}".rstrip(": ")]
        )
    return "\n".join(lines) + "\n"


def _finish(result: dict, out: Path, log: Callable[[str], None]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "nightly.json", result)
    text = issue_text(result)
    write_text_atomic(out / "nightly.md", text)
    log(text)
    log(f"nightly: {out / 'nightly.json'}, issue text {out / 'nightly.md'}; exit {result['exit']}")
    return result
