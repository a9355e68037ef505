"""The printed table: one line per (cell, mode), one column group per implementation.

Each group reads ``<median ms> <x vs best softcapping impl> <peak MiB>``; ``oom`` / ``err`` /
``skip`` replace the figures where a call did not run. The last column is Unsloth's achieved
useful TFLOP/s and its fraction of the measured matmul ceiling.
"""

from __future__ import annotations

from collections.abc import Sequence

W = 24  # width of one implementation's column group


def header(impls: Sequence[str]) -> str:
    head = f"{'model':5} {'layer':7} {'len':>6} {'b':>2} {'mode':6} |"
    for i in impls:
        head += f" {i + ' ms  x  MiB':>{W}} |"
    return head + " unsloth TFLOP/s (ceiling %)"


def _fmt(r: dict | None) -> str:
    if not r:
        return "-"
    st = r.get("status", "")
    if st == "ok":
        x = r.get("x_best_softcap") or r.get("x_best")
        mib = r.get("peak_mib")
        mib_s = f"{mib:.0f}" if mib is not None else "n/a"
        return f"{r['median_ms']:.3f} {x:.2f}x {mib_s}" if x else f"{r['median_ms']:.3f} {mib_s}"
    if st == "oom":
        return "oom*" if r.get("inferred_from") else "oom"
    if st.startswith("skipped"):
        return "skip"
    return "err " + st.split(":", 2)[1][:14] if ":" in st else "err"


def rows(rec: dict, impls: Sequence[str], modes: Sequence[str]) -> list[str]:
    """The table lines of one cell record."""
    out = []
    for m in modes:
        line = f"{rec['model']:5} {rec['layer']:7} {rec['length']:>6} {rec['batch']:>2} {m:6} |"
        for i in impls:
            cell = _fmt(rec["results"].get(i, {}).get(m))
            if rec["results"].get(i, {}).get("finite") is False:
                cell = "NaN! " + cell  # the output was not finite: the time is not a valid figure
            line += f" {cell:>{W}} |"
        u = rec["results"].get("unsloth", {}).get(m, {})
        if u.get("status") == "ok":
            frac = u.get("frac_of_ceiling")
            line += f" {u['tflops']:.1f}" + (f" ({100 * frac:.1f}%)" if frac else "")
        out.append(line)
    return out


def render(payload: dict) -> str:
    """The whole table for a payload, with its legend."""
    impls, modes = payload["options"]["impls"], payload["options"]["modes"]
    c = payload.get("ceiling", {})
    lines = [
        f"device: {payload['device']}  dtype: {payload['dtype']}  timer: {payload['timer']}  "
        f"unsloth: {payload['versions'].get('unsloth')}  torch: {payload['versions'].get('torch')}",
        f"ceilings: {c.get('matmul', {}).get('what')} = {c.get('matmul', {}).get('tflops', 0):.0f} TFLOP/s, "
        f"{c.get('copy', {}).get('what')} = {c.get('copy', {}).get('gbps', 0):.0f} GB/s",
        header(impls),
    ]
    for rec in payload["cells"]:
        lines.extend(rows(rec, impls, modes))
    lines.extend(walls(payload))
    lines.append(legend(payload))
    return "\n".join(lines)


def walls(payload: dict) -> list[str]:
    """Per model, layer, batch and mode, with two lengths or more: each implementation's longest length
    that ran and its shortest that ran out of memory (tried or inferred), ``-`` where there is none;
    lengths a time budget skipped are named, since nothing is known of them."""
    impls, modes = payload["options"]["impls"], payload["options"]["modes"]
    groups: dict[tuple, list[dict]] = {}
    for rec in payload["cells"]:
        groups.setdefault((rec["model"], rec["layer"], rec["batch"]), []).append(rec)
    out = []
    for (model, layer, batch), recs in groups.items():
        if len({r["length"] for r in recs}) < 2:
            continue
        for m in modes:
            parts = []
            for i in impls:
                got = [(r["length"], r["results"].get(i, {}).get(m, {}).get("status")) for r in recs]
                ran = [n for n, st in got if st == "ok"]
                oom = [n for n, st in got if st == "oom"]
                parts.append(f"{i} {max(ran) if ran else '-'} / {min(oom) if oom else '-'}")
            skipped = sorted(
                r["length"]
                for r in recs
                if any(
                    str(v.get(m, {}).get("status", "")).startswith("skipped") for v in r["results"].values()
                )
            )
            note = f" (not measured: {', '.join(map(str, skipped))})" if skipped else ""
            out.append(f"  {model:4} {layer:7} b{batch:<2} {m:6}: " + "; ".join(parts) + note)
    if out:
        out.insert(0, "walls: longest length that ran / shortest that ran out of memory (- none):")
    return out


def legend(payload: dict) -> str:
    """How to read the table, and what this run's ceilings were."""
    c = payload.get("ceiling", {})
    text = (
        "x = median / best softcapping implementation's median (unsloth, flex; for sdpa: / best of all); "
        "MiB = peak extra memory of one call;\nNaN! = output not all finite; oom* = not tried: a smaller cell already ran out of memory; "
        f"ceilings this run: {c.get('matmul', {}).get('tflops', 0):.0f} TFLOP/s, "
        f"{c.get('copy', {}).get('gbps', 0):.0f} GB/s; wall {payload.get('wall_s')} s"
    )
    if payload.get("options", {}).get("plant_slowdown"):
        text += f"\nPLANTED SLOWDOWN x{payload['options']['plant_slowdown']:g} was active in this run"
    return text
