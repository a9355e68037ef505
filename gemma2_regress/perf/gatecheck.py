"""The release gate's performance check: a candidate Unsloth's perf run against a baseline's.

For every cell and mode measured ``ok`` in the baseline, the candidate's Unsloth time is compared
with the baseline's. Timings from two runs are only comparable after removing what the machine did
in between, so by default (``basis="sdpa"``) each run's Unsloth median is first divided by the SDPA
floor measured *in the same run and cell* (interleaved with it), and the gate compares those
normalised times: ``ratio = (cand_unsloth / cand_sdpa) / (base_unsloth / base_sdpa)``.
``basis="raw"`` compares the medians directly (same machine, same torch, back to back).

A row fails (and the gate fails) when
- ``slower``:   ratio > ``threshold`` (default 1.25: a 25 % slowdown; the repeat-to-repeat spread of
  medians on one H200 is a few per cent, the planted 2x mutant is far beyond it);
- ``hungrier``: peak memory ratio > ``mem_threshold`` (default 1.10);
- ``new-oom``:  the candidate ran out of memory (or failed) where the baseline ran.
Cells whose baseline median is below ``min_ms`` are reported but never fail (launch-overhead noise);
cells the candidate did not reach (its time budget, a smaller grid) are ``not-compared``. No
compared cell at all is a failure: a gate cannot pass on nothing.
"""

from __future__ import annotations

from pathlib import Path

from .bench import load

IMPL = "unsloth"
FAILING = ("slower", "hungrier", "new-oom")


def _index(payload: dict) -> dict[str, dict]:
    return {c["key"]: c for c in payload["cells"]}


def _row(
    key: str,
    mode: str,
    base: dict,
    cand: dict | None,
    threshold: float,
    mem_threshold: float,
    basis: str,
    min_ms: float,
) -> dict:
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
    if basis == "sdpa":
        bs = base["results"].get("sdpa", {}).get(mode, {})
        cs = cand["results"].get("sdpa", {}).get(mode, {})
        if bs.get("status") == "ok" and cs.get("status") == "ok":
            ratio, used = raw / (cs["median_ms"] / bs["median_ms"]), "sdpa"
    row.update(raw_ratio=raw, time_ratio=ratio, basis=used)
    mem = None
    if b.get("peak_mib") and c.get("peak_mib") is not None:
        mem = c["peak_mib"] / b["peak_mib"]
    row["mem_ratio"] = mem
    if b["median_ms"] < min_ms:
        row["verdict"] = "noise-floor"
    elif ratio > threshold:
        row["verdict"] = "slower"
    elif mem is not None and mem > mem_threshold:
        row["verdict"] = "hungrier"
    else:
        row["verdict"] = "ok"
    return row


def compare(
    candidate_json: str | Path | dict,
    baseline_json: str | Path | dict,
    threshold: float = 1.25,
    *,
    mem_threshold: float = 1.10,
    basis: str = "sdpa",
    min_ms: float = 0.05,
) -> tuple[bool, list[dict]]:
    """``(ok, rows)``: ok is False if any row is slower / hungrier / new-oom, or no row was compared."""
    if threshold <= 1.0 or mem_threshold <= 1.0:
        raise ValueError(f"thresholds must exceed 1.0 (got time {threshold}, memory {mem_threshold})")
    if basis not in ("sdpa", "raw"):
        raise ValueError(f"basis {basis!r}: use 'sdpa' (normalised by the in-run floor) or 'raw'")
    cand, base = _index(load(candidate_json)), _index(load(baseline_json))
    rows = []
    for key, bc in base.items():
        for mode, r in bc["results"].get(IMPL, {}).items():
            if isinstance(r, dict) and r.get("status") == "ok":
                rows.append(_row(key, mode, bc, cand.get(key), threshold, mem_threshold, basis, min_ms))
    compared = [r for r in rows if r["verdict"] != "not-compared"]
    ok = bool(compared) and not any(r["verdict"] in FAILING for r in rows)
    return ok, rows


def render(ok: bool, rows: list[dict], threshold: float) -> str:
    """A short table of the comparison and the verdict line."""
    lines = [f"{'cell':28} {'mode':6} {'base ms':>9} {'cand ms':>9} {'ratio':>6} {'mem':>6}  verdict"]
    for r in rows:
        tr = f"{r['time_ratio']:.2f}" if r.get("time_ratio") is not None else "-"
        mr = f"{r['mem_ratio']:.2f}" if r.get("mem_ratio") is not None else "-"
        bm = f"{r['base_ms']:.3f}" if r.get("base_ms") is not None else "-"
        cm = f"{r['cand_ms']:.3f}" if r.get("cand_ms") is not None else "-"
        lines.append(
            f"{r['cell']:28} {r['mode']:6} {bm:>9} {cm:>9} {tr:>6} {mr:>6}  {r['verdict']}"
            + (f" ({r['note']})" if r.get("note") else "")
        )
    bad = sum(r["verdict"] in FAILING for r in rows)
    lines.append(
        f"perf gate: {'PASS' if ok else 'FAIL'} ({len(rows)} rows, {bad} failing, time threshold {threshold}x)"
    )
    return "\n".join(lines)
