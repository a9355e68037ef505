"""How sensitive the perf gate is: slowdowns of known sizes planted in the real kernel, in one process.

``sensitivity`` measures a few cells (Unsloth and the SDPA floor, the two the gate reads) once as the
baseline, then for each of ``runs`` rounds once clean and once per planted size
(``impls.planted_slowdown``), and compares each of those candidate runs with the baseline through the
gate (``gatecheck.compare``, its rule in ``stats``). A clean run the gate fails is a false alarm; a
planted one it fails is a detection. The table: per size, detected k of n and the median measured
ratio; clean, false alarms k of n.

Why it is built this way:
- One process: Unsloth's kernel is compiled (max-autotune: minutes on the H200) on its first call and
  reused by every later run; the planted patch wraps it and does not recompile. A warm-up run comes
  first (its figures dropped), so the baseline, like every candidate, is measured on a compiled kernel.
  torch.compile's graph count is read after every run: a recompile would be reported.
- The order within a round rotates (round 1: clean, x1.05, x1.10, ...; round 2 starts at x1.05), so
  a drift of the machine over the run does not fall on one size.
- The state (``<out>/sensitivity.json``, with the baseline's whole JSON and every candidate's
  per-repeat times) and the table (``<out>/sensitivity.md``) are rewritten atomically after every
  comparison. A rerun with the same ``--out`` and options skips what is done (``--runs`` may grow);
  other options are refused, since the counts would mix two experiments. A resumed process compiles
  again and compares against the stored baseline, as the release gate compares two processes.
- ``budget_s`` counts from the command's start (Unsloth's import and the compile included): no run
  starts that the longest run so far would carry past it; what is done is written and kept.

What it does not measure: between two processes max-autotune may pick other kernels; here both sides
share one compile, so such a shift (a cause of false alarms in a real gate) is not exercised.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gemma2_regress.atomic import write_json_atomic, write_text_atomic

from . import stats

if TYPE_CHECKING:  # torch-free at import: the command line's parser reads this module's defaults
    from .bench import Options, Prepare

SCHEMA = "gemma2-regress-perf-sensitivity/1"
STATE, TABLE = "sensitivity.json", "sensitivity.md"
SIZES = (1.05, 1.10, 1.15, 1.25, 1.50)
IMPLS = ("unsloth", "sdpa")  # what the gate reads: Unsloth's time and the floor that normalises it
REPEATS = 50  # the interval's width at the issue's target: stats' MIN_EFFECT reasoning
TARGET = 1.15  # issue #15: a 15 % slowdown caught every time, no false alarm


@dataclasses.dataclass
class Plan:
    """What to measure (``run``: cells, modes, repeats, device, dtype; its ``out`` and budget unused)
    and how often."""

    run: Options
    sizes: tuple[float, ...] = SIZES
    runs: int = 10
    budget_s: float | None = None
    out: Path = Path("reports/perf-sensitivity")
    min_effect: float = stats.MIN_EFFECT


def label(size: float | None) -> str:
    """``clean`` or ``x1.15``."""
    return "clean" if size is None else f"x{size:g}"


def identity(plan: Plan) -> dict:
    """What a resumed run must share with the stored one (``runs`` and the budget may differ)."""
    o = plan.run
    return {
        "cells": [c.key for c in o.cells],
        "impls": list(o.impls),
        "modes": list(o.modes),
        "repeats": o.repeats,
        "warmup": o.warmup,
        "device": o.device,
        "dtype": o.dtype,
        "sizes": list(plan.sizes),
        "min_effect": plan.min_effect,
        "rule": {"confidence": stats.CONFIDENCE, "n_boot": stats.N_BOOT, "seed": stats.SEED},
    }


def schedule(plan: Plan) -> list[tuple[int, float | None]]:
    """(round, size or None for clean) in the order they are measured: each round rotated by one."""
    kinds: list[float | None] = [None, *plan.sizes]
    out = []
    for r in range(1, plan.runs + 1):
        k = (r - 1) % len(kinds)
        out += [(r, s) for s in kinds[k:] + kinds[:k]]
    return out


def load_state(plan: Plan) -> dict | None:
    """The stored state of ``plan.out``, or None if there is none; another experiment's state (other
    options) or an unreadable file is a one-line ``ValueError`` naming the fix."""
    from .bench import differences  # bench imports torch: not at this module's import

    path = plan.out / STATE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}); pass another --out or remove it") from None
    if not isinstance(state, dict) or state.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a sensitivity state ({SCHEMA}); pass another --out")
    want, have = identity(plan), state.get("identity", {})
    diff = differences(have, want)
    if diff:
        raise ValueError(
            f"--out {plan.out} holds a sensitivity run with other options ({'; '.join(diff)}); "
            "rerun with its options to resume it, or pass another --out"
        )
    return state


def _graphs() -> int | None:
    """How many graphs torch.compile has made in this process (None where that is not counted)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except (ImportError, KeyError, TypeError):
        return None


def _compact(rows: list[dict], cand: dict) -> tuple[list[dict], dict]:
    """The rows as stored (what the table needs) and the candidate's per-repeat times per row."""
    keep = ("cell", "mode", "verdict", "time_ratio", "ci_low", "ci_high", "stat", "note")
    cells = {c["key"]: c["results"] for c in cand["cells"]}
    times = {}
    for r in rows:
        res = cells.get(r["cell"], {})
        times[f"{r['cell']} {r['mode']}"] = {
            i: res.get(i, {}).get(r["mode"], {}).get("times_ms") for i in IMPLS if i in res
        }
    return [{k: r[k] for k in keep if k in r} for r in rows], times


def summarize(state: dict) -> dict:
    """Per kind (clean, then each size): comparisons, alarms (the gate failed), why, and the median
    measured ratio and interval low end over all rows; per row (cell and mode) the median ratio."""
    out: dict = {}
    for kind in ["clean"] + [label(s) for s in state["identity"]["sizes"]]:
        done = [c for c in state["comparisons"] if c["label"] == kind]
        rows = [r for c in done for r in c["rows"] if r.get("time_ratio") is not None]
        per_row: dict[str, list[float]] = {}
        for r in rows:
            per_row.setdefault(f"{r['cell']} {r['mode']}", []).append(r["time_ratio"])
        lows = [r["ci_low"] for r in rows if r.get("ci_low") is not None]
        out[kind] = {
            "n": len(done),
            "alarms": sum(c["alarm"] for c in done),
            "why": dict(Counter(v for c in done for v in c["failing"])),
            "median_ratio": statistics.median(x["time_ratio"] for x in rows) if rows else None,
            "median_low": statistics.median(lows) if lows else None,
            "per_row_median_ratio": {k: statistics.median(v) for k, v in per_row.items()},
        }
    return out


def verdict_line(summary: dict) -> str:
    """Whether the issue's target holds on what was measured."""
    clean, target = summary.get("clean", {}), summary.get(label(TARGET))
    if not clean.get("n") or not target or not target.get("n"):
        return f"target (15 % caught every time, no false alarm): not measured (needs clean and {label(TARGET)} runs)"
    met = clean["alarms"] == 0 and target["alarms"] == target["n"]
    return (
        f"target (15 % caught every time, no false alarm): {'met' if met else 'NOT met'} "
        f"({label(TARGET)} caught {target['alarms']} of {target['n']}, false alarms {clean['alarms']} of {clean['n']})"
    )


def render(state: dict) -> str:
    """The markdown table (also what is printed at the end)."""
    s = state["summary"]
    ident = state["identity"]
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [
        "# Perf gate sensitivity",
        "",
        f"device {state.get('device')}, unsloth {state.get('unsloth')}, torch {state.get('torch')}; cells "
        f"{', '.join(ident['cells'])}; modes {', '.join(ident['modes'])}; {ident['repeats']} repeats per run; "
        f"gate: slower = 95 % interval above {ident['min_effect']}x (perf/stats.py); "
        f"{len(state['comparisons'])} of {state['planned']} comparisons, wall {state.get('wall_s')} s"
        + (f"; STOPPED: {state['stopped']}" if state.get("stopped") else ""),
        "",
        "| run | gate failed | median ratio | median interval low | median ratio per row |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, r in s.items():
        what = "false alarms" if kind == "clean" else "detected"
        rows = "; ".join(f"{k} {v:.3f}" for k, v in r["per_row_median_ratio"].items())
        why = ", ".join(f"{k} {v}" for k, v in sorted(r["why"].items()) if k != "slower")
        lines.append(
            f"| {'clean' if kind == 'clean' else 'planted ' + kind} | {what} {r['alarms']} of {r['n']}"
            + (f" ({why})" if why else "")
            + f" | {f(r['median_ratio'])} | {f(r['median_low'])} | {rows or '-'} |"
        )
    lines += ["", verdict_line(s)]
    return "\n".join(lines)


def _write(plan: Plan, state: dict, started: float) -> None:
    state["wall_s"] = round(time.monotonic() - started, 1)
    state["summary"] = summarize(state)
    write_json_atomic(plan.out / STATE, state)
    write_text_atomic(plan.out / TABLE, render(state) + "\n")


def run(
    plan: Plan,
    *,
    prepare: Prepare | None = None,
    log: Callable[[str], None] | None = None,
    started: float | None = None,
) -> dict:
    """Measure (or resume) the plan; returns the state (also in ``plan.out``). ``started`` is the
    command's start on ``time.monotonic()`` (the budget counts from it; default: now); ``log`` takes
    the progress lines (default: printed at once)."""
    from . import bench, gatecheck

    log = log or bench.say
    started = time.monotonic() if started is None else started
    state = load_state(plan) or {
        "schema": SCHEMA,
        "identity": identity(plan),
        "baseline": None,
        "processes": [],
        "comparisons": [],
    }
    todo = schedule(plan)
    done = {c["key"] for c in state["comparisons"]}
    state.update(planned=max(len(todo), len(done)), complete=False, stopped=None)
    left = [(r, s) for r, s in todo if f"{r}/{label(s)}" not in done]
    log(
        f"sensitivity: {len(done)} comparisons done, {len(left)} to do "
        f"({plan.runs} rounds of clean + {', '.join(label(s) for s in plan.sizes)}) -> {plan.out}"
    )
    longest = 0.0

    def measure(name: str, size: float | None) -> dict | None:
        """One bench run (None when the budget leaves no room for it)."""
        nonlocal longest
        if plan.budget_s is not None and time.monotonic() - started + longest > plan.budget_s:
            return None
        o = dataclasses.replace(plan.run, out=None, budget_s=None, plant_slowdown=size or 0, label=name)
        t0 = time.monotonic()
        payload = bench.run(o, prepare=prepare, log=lambda s: None)
        longest = max(longest, time.monotonic() - t0)
        return payload

    proc: dict = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    state["processes"].append(proc)
    if left or state["baseline"] is None:
        log("sensitivity: warm-up run (Unsloth's import and compilation land here; its figures are dropped)")
        warm = measure("warm-up", None)
        if warm is None:
            state["stopped"] = "time budget: before the warm-up run"
        else:
            proc.update(
                first_calls_ms=warm["first_calls_ms"],
                unsloth_import_s=warm.get("unsloth_import_s"),
                warm_s=round(longest, 1),
            )
            state.update(device=warm["device"], torch=warm["versions"].get("torch"))
            state["unsloth"] = warm["versions"].get("unsloth_loaded") or warm["versions"].get("unsloth")
            log(f"sensitivity: warm-up took {longest:.1f} s; first calls (ms): {warm['first_calls_ms']}")
            longest = 0.0  # the compile is not what a later run costs
    if state["baseline"] is None and not state["stopped"]:
        state["baseline"] = measure("baseline", None)
        if state["baseline"] is None:
            state["stopped"] = "time budget: before the baseline"
        else:
            log(f"sensitivity: baseline measured ({longest:.1f} s)")
    graphs = _graphs()
    for r, size in left:
        if state["stopped"]:
            break
        name = label(size)
        cand = measure(f"round {r} {name}", size)
        if cand is None:
            state["stopped"] = (
                f"time budget: {len(state['comparisons'])} of {state['planned']} comparisons done"
            )
            break
        ok, rows = gatecheck.compare(cand, state["baseline"], min_effect=plan.min_effect)
        compact, times = _compact(rows, cand)
        now = _graphs()
        rec = {
            "key": f"{r}/{name}",
            "round": r,
            "label": name,
            "size": size,
            "ok": ok,
            "alarm": not ok,
            "failing": sorted({x["verdict"] for x in rows if x["verdict"] in gatecheck.FAILING}),
            "rows": compact,
            "times_ms": times,
            "run_s": cand.get("wall_s"),
            "new_graphs": None if graphs is None or now is None else now - graphs,
        }
        graphs = now
        state["comparisons"].append(rec)
        _write(plan, state, started)
        shown = "; ".join(
            f"{x['cell']} {x['mode']} {x['time_ratio']:.3f}"
            + (f" [{x['ci_low']:.3f}-{x['ci_high']:.3f}]" if x.get("ci_low") is not None else "")
            for x in compact
            if x.get("time_ratio") is not None
        )
        what = (
            ("FALSE ALARM" if size is None else "caught")
            if not ok
            else ("pass" if size is None else "missed")
        )
        log(
            f"sensitivity [{len(state['comparisons'])}/{state['planned']}] round {r}/{plan.runs} {name}: "
            f"{what} ({', '.join(rec['failing']) or 'ok'}) {shown}; {time.monotonic() - started:.0f} s"
            + (f"; torch compiled {rec['new_graphs']} new graph(s) in this run" if rec["new_graphs"] else "")
        )
    state["complete"] = not state["stopped"] and all(
        f"{r}/{label(s)}" in {c["key"] for c in state["comparisons"]} for r, s in todo
    )
    _write(plan, state, started)
    return state
