"""The release gate's performance check: a candidate Unsloth's perf run against a baseline's.

For every cell and mode measured ``ok`` in the baseline, the candidate's Unsloth time is compared
with the baseline's. Timings from two runs are only comparable after removing what the machine did
in between, so by default (``basis="sdpa"``) each run's Unsloth median is first divided by the SDPA
floor measured *in the same run and cell* (interleaved with it), and the gate compares those
normalised times: ``ratio = (cand_unsloth / cand_sdpa) / (base_unsloth / base_sdpa)``.
``basis="raw"`` compares the medians directly (same machine, same torch, back to back).

A row fails (and the gate fails) when
- ``slower``:   the candidate is slower by more than ``min_effect`` beyond the noise: the lower end of
  the bootstrap interval of ``ratio`` exceeds ``min_effect`` (default 1.05). The rule, its numbers and
  why are stated once, in ``stats``; it needs each run's per-repeat times (``times_ms``, at least
  ``stats.MIN_REPEATS`` of them). A row without them (a JSON from before they were kept, a run with
  fewer repeats) falls back to the bare ratio against ``threshold`` (default ``stats.BARE_THRESHOLD``),
  and its note says so;
- ``hungrier``: peak memory ratio > ``mem_threshold`` (default 1.10);
- ``new-oom``:  the candidate ran out of memory (or failed) where the baseline ran.
Cells whose baseline median is below ``min_ms`` are reported but never fail (launch-overhead noise);
cells the candidate did not reach (its time budget, a smaller grid) are ``not-compared``. No
compared cell at all is a failure: a gate cannot pass on nothing.
"""

from __future__ import annotations

from pathlib import Path

from . import stats
from .bench import load

IMPL = "unsloth"
FAILING = ("slower", "hungrier", "new-oom")


def _index(payload: dict) -> dict[str, dict]:
    return {c["key"]: c for c in payload["cells"]}


def _times(r: dict) -> list[float] | None:
    """A result's per-repeat times if there are enough for the interval (``stats.MIN_REPEATS``)."""
    t = r.get("times_ms")
    return list(t) if t and len(t) >= stats.MIN_REPEATS else None


def _row(key: str, mode: str, base: dict, cand: dict | None, rule: dict) -> dict:
    b = base["results"].get(IMPL, {}).get(mode, {})
    row = {"cell": key, "mode": mode, "base_ms": b.get("median_ms"), "base_mib": b.get("peak_mib")}
    if cand is None:
        return {**row, "verdict": "not-compared", "note": "cell not in the candidate run"}
    c = cand["results"].get(IMPL, {}).get(mode, {})
    if str(c.get("status", "")).startswith("skipped"):
        return {**row, "verdict": "not-compared", "note": f"candidate: {c['status']}"}
    if c.get("status") != "ok":
        return {**row, "verdict": "new-oom", "note": f"candidate: {c.get('status', 'not run')}"}
    row.update(cand_ms=c["median_ms"], cand_mib=c.get("peak_mib"))
    raw = c["median_ms"] / b["median_ms"]
    ratio, used = raw, "raw"
    bs = base["results"].get("sdpa", {}).get(mode, {})
    cs = cand["results"].get("sdpa", {}).get(mode, {})
    floors = rule["basis"] == "sdpa" and bs.get("status") == "ok" and cs.get("status") == "ok"
    if floors:
        ratio, used = raw / (cs["median_ms"] / bs["median_ms"]), "sdpa"
    sides = [c, b, cs, bs] if floors else [c, b]  # the argument order of stats.ratio_interval
    times = [_times(r) for r in sides]
    if all(t is not None for t in times):
        iv = stats.ratio_interval(*times, confidence=rule["confidence"], seed=rule["seed"])
        ratio, slower = iv.ratio, iv.slower(rule["min_effect"])
        row.update(stat="bootstrap", ci_low=iv.low, ci_high=iv.high, repeats=[len(times[0]), len(times[1])])
    else:
        slower = ratio > rule["threshold"]
        fewest = min(len(r.get("times_ms") or ()) for r in sides)
        why = "no per-repeat times (an older JSON)" if fewest == 0 else f"only {fewest} timed repeats"
        row.update(stat="bare", note=f"{why}: bare ratio against {rule['threshold']}x, not the interval")
    row.update(raw_ratio=raw, time_ratio=ratio, basis=used)
    mem = None
    if b.get("peak_mib") and c.get("peak_mib") is not None:
        mem = c["peak_mib"] / b["peak_mib"]
    row["mem_ratio"] = mem
    if b["median_ms"] < rule["min_ms"]:
        row["verdict"] = "noise-floor"
    elif slower:
        row["verdict"] = "slower"
    elif mem is not None and mem > rule["mem_threshold"]:
        row["verdict"] = "hungrier"
    else:
        row["verdict"] = "ok"
    return row


def compare(
    candidate_json: str | Path | dict,
    baseline_json: str | Path | dict,
    threshold: float = stats.BARE_THRESHOLD,
    *,
    min_effect: float = stats.MIN_EFFECT,
    mem_threshold: float = 1.10,
    basis: str = "sdpa",
    min_ms: float = 0.05,
    confidence: float = stats.CONFIDENCE,
    seed: int = stats.SEED,
) -> tuple[bool, list[dict]]:
    """``(ok, rows)``: ok is False if any row is slower / hungrier / new-oom, or no row was compared.

    ``min_effect`` is the statistic's bound (``stats``); ``threshold`` applies only to rows without
    per-repeat times (the bare ratio, as before those were kept)."""
    if threshold <= 1.0 or mem_threshold <= 1.0:
        raise ValueError(f"thresholds must exceed 1.0 (got time {threshold}, memory {mem_threshold})")
    if min_effect < 1.0:
        raise ValueError(f"min_effect must be at least 1.0 (got {min_effect}); 1.05 = 5 % slower")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (got {confidence}), e.g. 0.95")
    if basis not in ("sdpa", "raw"):
        raise ValueError(f"basis {basis!r}: use 'sdpa' (normalised by the in-run floor) or 'raw'")
    rule = {
        "threshold": threshold,
        "min_effect": min_effect,
        "mem_threshold": mem_threshold,
        "basis": basis,
        "min_ms": min_ms,
        "confidence": confidence,
        "seed": seed,
    }
    cand, base = _index(load(candidate_json)), _index(load(baseline_json))
    rows = []
    for key, bc in base.items():
        for mode, r in bc["results"].get(IMPL, {}).items():
            if isinstance(r, dict) and r.get("status") == "ok":
                rows.append(_row(key, mode, bc, cand.get(key), rule))
    compared = [r for r in rows if r["verdict"] != "not-compared"]
    ok = bool(compared) and not any(r["verdict"] in FAILING for r in rows)
    return ok, rows


def render(ok: bool, rows: list[dict], threshold: float, min_effect: float = stats.MIN_EFFECT) -> str:
    """A short table of the comparison and the verdict line."""
    head = f"{'cell':28} {'mode':6} {'base ms':>9} {'cand ms':>9} {'ratio':>6} {'interval':>13} {'mem':>6}"
    lines = [head + "  verdict"]
    for r in rows:
        tr = f"{r['time_ratio']:.3f}" if r.get("time_ratio") is not None else "-"
        ci = f"{r['ci_low']:.3f}-{r['ci_high']:.3f}" if r.get("stat") == "bootstrap" else "-"
        mr = f"{r['mem_ratio']:.2f}" if r.get("mem_ratio") is not None else "-"
        bm = f"{r['base_ms']:.3f}" if r.get("base_ms") is not None else "-"
        cm = f"{r['cand_ms']:.3f}" if r.get("cand_ms") is not None else "-"
        lines.append(
            f"{r['cell']:28} {r['mode']:6} {bm:>9} {cm:>9} {tr:>6} {ci:>13} {mr:>6}  {r['verdict']}"
            + (f" ({r['note']})" if r.get("note") else "")
        )
    bad = sum(r["verdict"] in FAILING for r in rows)
    lines.append(
        f"perf gate: {'PASS' if ok else 'FAIL'} ({len(rows)} rows, {bad} failing; slower = the interval "
        f"above {min_effect}x, or without per-repeat times the ratio above {threshold}x)"
    )
    return "\n".join(lines)
