"""The release gate: run the test tiers against a candidate Unsloth and a baseline, and fail on any
test that passes on the baseline and fails on the candidate (and on a performance regression).

Candidate / baseline specs: a PyPI version (``2026.10.9``, ``latest``), a site folder (an unpacked
offline bundle, ``/tmp/cand/gpusite``: put in front of the current interpreter's path), a wheel file
(``dist/unsloth-2026.11.0rc1-py3-none-any.whl``: laid with ``--no-deps`` over the baseline's
environment, i.e. tested with the neighbours of the release it replaces), or a git ref of a
checkout given with ``repo`` (its source laid over the baseline's environment). ``installed``
means the current interpreter's environment as it is (the air-gapped GPU runner's case).

Tiers: ``cpu`` (``-m "not gpu"``) always, ``gpu`` (``-m gpu``) when torch sees a CUDA device.
Hypothesis runs under the deterministic ``ci`` / ``gpu`` profiles, so both sides draw the same
examples. Per test: ``regression`` (ok on baseline, failing on candidate: the gate fails),
``fixed``, ``both-fail``, ``ok``, ``skipped``, ``new`` / ``gone`` (only on one side).
Performance: ``gemma2_regress.perf.compare(candidate_json, baseline_json, threshold, min_effect=...)``
on the two sides' ``perf run`` JSON when requested (default: on a GPU); without that module, "perf: not
run". ``min_effect`` bounds the bootstrap interval of the time ratio (``perf/stats.py``); ``threshold``
is the bare ratio for runs without per-repeat times.
Outputs in ``out``: ``gate.json``, ``gate-junit.xml`` (one testcase per test, failures = regressions).
Both specs are checked (``sources.check_spec``: the version is on PyPI, the wheel file exists, the git
ref resolves, the site folder holds Unsloth) before either side is built (``sources.environment``), and
nothing is written before. Per-test verdicts come from each side's summary JSON (``builds.runner``).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from gemma2_regress import suite
from gemma2_regress.atomic import write_json_atomic, write_text_atomic
from gemma2_regress.builds import envs, runner
from gemma2_regress.builds.runner import Outcome, Selection
from gemma2_regress.builds.sources import BisectError, check_spec, environment
from gemma2_regress.perf.stats import BARE_THRESHOLD, MIN_EFFECT


@dataclasses.dataclass
class Side:
    """One side of the gate: its spec and its environment."""

    name: str  # candidate | baseline
    spec: str
    env: envs.Env
    install_s: float
    cache_hit: bool


def compare_tier(base: list[Outcome], cand: list[Outcome]) -> list[dict]:
    """Per-test rows for one tier: baseline verdict, candidate verdict, and the gate's call."""
    b, c = {t.nodeid: t for t in base}, {t.nodeid: t for t in cand}
    rows = []
    for node in sorted(set(b) | set(c)):
        bv = b[node].verdict if node in b else None
        cv = c[node].verdict if node in c else None
        fail_b = node in b and b[node].failed
        fail_c = node in c and c[node].failed
        if bv is None:
            call = "new-fail" if fail_c else "new"
        elif cv is None:
            call = "gone"
        elif bv == "ok" and fail_c:
            call = "regression"
        elif fail_b and not fail_c:
            call = "fixed"
        elif fail_b and fail_c:
            call = "both-fail"
        else:
            call = "skipped" if "skipped" in (bv, cv) else "ok"
        msg = c[node].message if node in c and fail_c else ""
        rows.append({"test": node, "baseline": bv, "candidate": cv, "call": call, "message": msg})
    return rows


def cuda_devices(env: envs.Env) -> int:
    """How many CUDA devices the torch of ``env`` sees (0 without one). Without a usable NVIDIA driver
    (``gpu_check.driver_problem``, the rule of `nox -s gpu`) 0, without asking: ``env``'s Python would
    import torch (a second of CPU) to answer the same."""
    from gemma2_regress.gpu_check import cuda_device_count, driver_problem

    if driver_problem() is not None:
        return 0
    return cuda_device_count(env.python, env.environ())


def _perf(
    sides: list[Side],
    out: Path,
    limits: tuple[float, float],
    cwd: Path,
    want: bool | None,
    perf_args: list[str],
) -> dict:
    threshold, min_effect = limits
    try:
        from gemma2_regress.perf import compare as perf_compare  # the perf engineer's hook
    except ImportError as exc:
        return {"status": "not run", "why": f"gemma2_regress.perf.compare is not available ({exc})"}
    gpu = cuda_devices(sides[0].env) > 0
    if want is False or (want is None and not gpu):
        return {
            "status": "not run",
            "why": "no GPU visible (pass --perf to run the CPU smoke preset)" if not gpu else "--no-perf",
        }
    paths = {}
    for s in sides:
        d = out / s.name / "perf"
        argv = [s.env.python, "-m", "gemma2_regress.perf", "run", "--out", str(d), "--no-plot", *perf_args]
        done = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            env=s.env.environ(base={**os.environ, "PYTHONPATH": str(cwd)}),
        )
        if done.returncode or not (d / "perf.json").exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return {
                "status": "error",
                "why": f"perf run on the {s.name} failed: {tail[0][:200]}",
                "ok": False,
            }
        paths[s.name] = d / "perf.json"
    ok, rows = perf_compare(paths["candidate"], paths["baseline"], threshold, min_effect=min_effect)
    return {
        "status": "pass" if ok else "fail",
        "ok": ok,
        "threshold": threshold,
        "min_effect": min_effect,
        "rows": rows,
    }


def gate(
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
    perf: bool | None = None,
    perf_threshold: float = BARE_THRESHOLD,
    perf_min_effect: float = MIN_EFFECT,
    perf_args: list[str] | None = None,
    timeout_s: float = 7200.0,
    log=print,
) -> dict:
    """Run the gate; return the result (also written to ``out/gate.json`` and ``out/gate-junit.xml``)."""
    t0 = time.time()
    # Both sides are checked before either is built: a typo in the candidate must not cost a baseline build.
    unknown = [t for t in tiers or () if t not in suite.TIER_MARKS]
    if unknown or tiers == []:
        raise BisectError(
            f"unknown tier(s) {', '.join(unknown) or '(none given)'}; use --tiers cpu, gpu or cpu,gpu"
        )
    c_spec = check_spec(candidate, "candidate", repo)
    b_spec = check_spec(baseline, "baseline")
    b_label, c_label = b_spec.label, c_spec.label
    base_env, b_s, b_hit = environment(b_spec, cache, torch=torch, installer=installer)
    log(f"gate: baseline {b_label} ready ({'cache hit' if b_hit else f'built in {b_s:.1f} s'})")
    c_env, c_s, c_hit = environment(c_spec, cache, base=base_env, repo=repo, torch=torch, installer=installer)
    log(f"gate: candidate {c_label} ready ({'cache hit' if c_hit else f'built in {c_s:.1f} s'})")
    sides = [Side("baseline", b_label, base_env, b_s, b_hit), Side("candidate", c_label, c_env, c_s, c_hit)]
    if tiers is None:
        tiers = ["cpu"] + (["gpu"] if cuda_devices(base_env) > 0 else [])
    result: dict = {"candidate": c_label, "baseline": b_label, "tiers": {}, "sides": {}}
    # What each side resolved to (a release's version, a commit's sha, a wheel's or folder's path): the
    # labels above are for people ("main (2827fbebbdaa)"); a bisect takes these.
    result["candidate_ref"], result["baseline_ref"] = c_spec.ref, b_spec.ref
    for s in sides:
        result["sides"][s.name] = {
            "spec": s.spec,
            "install_s": s.install_s,
            "cache_hit": s.cache_hit,
            **s.env.info,
        }
    for tier in tiers:
        outs = {}
        for s in sides:
            sel = Selection(
                [*pytest_args, "-m", suite.TIER_MARKS[tier]], timeout_s=timeout_s, known_issues=False
            )
            extra = {"HYPOTHESIS_PROFILE": suite.PROFILES[tier]}
            if tier == "gpu":
                extra["GEMMA2_REGRESS_GPUS"] = str(cuda_devices(s.env))
            res = runner.run(s.env, sel, out / s.name / tier, cwd=cwd, extra_env=extra)
            log(
                f"gate: {tier} tier on {s.name} {s.spec}: {len(res.tests)} tests, pytest exit {res.exit_code}, "
                f"{res.test_s:.0f} s"
            )
            outs[s.name] = res
        rows = compare_tier(outs["baseline"].tests, outs["candidate"].tests)
        result["tiers"][tier] = {
            "rows": rows,
            "test_s": {k: round(v.test_s, 1) for k, v in outs.items()},
            "exit": {k: v.exit_code for k, v in outs.items()},
            "unusable": {k: v.reason for k, v in outs.items() if v.status == "skip" and not v.tests},
        }
    limits = (perf_threshold, perf_min_effect)
    result["perf"] = _perf(sides, out, limits, cwd, perf, list(perf_args or []))
    regressions = [
        r for t in result["tiers"].values() for r in t["rows"] if r["call"] in ("regression", "new-fail")
    ]
    unusable = [
        f"{tier}: {k} {why}" for tier, t in result["tiers"].items() for k, why in t["unusable"].items()
    ]
    unusable += [  # a gate cannot pass on nothing: a tier where every test skipped (e.g. no GPU) fails it
        f"{tier}: no test ran (all skipped)"
        for tier, t in result["tiers"].items()
        if t["rows"] and all(r["call"] in ("skipped", "gone") for r in t["rows"])
    ]
    perf_failed = result["perf"].get("ok") is False
    result["regressions"] = regressions
    result["pass"] = not regressions and not unusable and not perf_failed
    result["why"] = (
        "; ".join(
            [f"{len(regressions)} test(s) pass on the baseline and fail on the candidate"] * bool(regressions)
            + unusable
            + [f"perf {result['perf']['status']}"] * perf_failed
        )
        or "no regression"
    )
    result["wall_s"] = round(time.time() - t0, 1)
    write_json_atomic(out / "gate.json", result)
    write_junit(result, out / "gate-junit.xml")
    log(render(result))
    return result


def render(result: dict) -> str:
    """The verdict table: counts per tier and call, the regressions, perf, and the verdict line."""
    calls = ("ok", "regression", "new-fail", "fixed", "both-fail", "skipped", "new", "gone")
    lines = [f"{'tier':6} " + " ".join(f"{c:>10}" for c in calls)]
    for tier, t in result["tiers"].items():
        counts = {c: sum(r["call"] == c for r in t["rows"]) for c in calls}
        lines.append(f"{tier:6} " + " ".join(f"{counts[c]:>10}" for c in calls))
    for r in result["regressions"][:30]:
        lines.append(f"  REGRESSION {r['test']}: {r['baseline']} -> {r['candidate']} {r['message'][:100]}")
    p = result["perf"]
    lines.append(f"perf: {p['status']}" + (f" ({p['why']})" if p.get("why") else ""))
    if p.get("rows"):
        counts = collections.Counter(r["verdict"] for r in p["rows"])
        lines[-1] += (
            f" (interval above {p.get('min_effect')}x, bare ratio {p.get('threshold')}x; "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            + ")"
        )
        for r in [r for r in p["rows"] if r["verdict"] not in ("ok", "noise-floor")][:10]:
            ratio = r.get("time_ratio")
            lines.append(
                f"  PERF {r['verdict']}: {r['cell']} {r['mode']}" + (f" x{ratio:.2f}" if ratio else "")
            )
    lines.append(
        f"gate {'PASS' if result['pass'] else 'FAIL'}: candidate {result['candidate']} vs baseline "
        f"{result['baseline']}: {result['why']}"
    )
    return "\n".join(lines)


def write_junit(result: dict, path: Path) -> None:
    """One testcase per (tier, test); a regression is a failure (atomic write)."""
    junit = ET.Element("testsuite", name="gemma2-regress-gate", tests="0", failures="0")
    n = fails = 0
    for tier, t in result["tiers"].items():
        for r in t["rows"]:
            n += 1
            tc = ET.SubElement(junit, "testcase", classname=f"gate.{tier}", name=r["test"])
            if r["call"] in ("regression", "new-fail"):
                fails += 1
                f = ET.SubElement(tc, "failure", message=f"{r['baseline']} -> {r['candidate']}")
                f.text = r["message"]
            elif r["call"] in ("skipped", "gone"):
                ET.SubElement(tc, "skipped", message=r["call"])
    if result["perf"].get("status") in ("pass", "fail", "error"):
        n += 1
        tc = ET.SubElement(junit, "testcase", classname="gate.perf", name="perf_compare")
        if result["perf"].get("ok") is False:
            fails += 1
            ET.SubElement(tc, "failure", message=result["perf"].get("why", "perf regression"))
    junit.set("tests", str(n))
    junit.set("failures", str(fails))
    write_text_atomic(path, ET.tostring(junit, encoding="unicode", xml_declaration=True))
