"""The benchmark run: every cell, every implementation, interleaved, written to JSON as it goes.

Per cell: inputs are made once and shared; each implementation is prepared (masks, block masks);
then per mode the first call is timed alone (``first_call_ms``: includes compilation the first time
a graph is seen), ``warmup - 1`` more calls are made, and ``repeats`` timed calls follow, the
implementations taking turns (rotated each round) so drift on a shared machine hits all alike.
An OOM or error is recorded for that implementation and mode and the run goes on; a cell larger
(longer or a bigger batch) than one that ran out of memory is recorded ``oom`` with
``inferred_from`` instead of being tried. The JSON is rewritten (atomically) after every cell,
so an interrupted run keeps what it measured; ``resume`` then measures only the cells it lacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from gemma2_regress import versions
from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.progress import Progress

from . import grid, impls, timing
from .grid import Cell

SCHEMA = "gemma2-regress-perf/1"
SOFTCAP_IMPLS = ("unsloth", "flex")


@dataclasses.dataclass
class Options:
    """How to run (the CLI fills it)."""

    cells: list[Cell]
    impls: tuple[str, ...] = impls.IMPLS
    modes: tuple[str, ...] = grid.MODES
    repeats: int = 7
    warmup: int = 2
    budget_s: float | None = None
    device: str = "cuda"
    dtype: str = "bfloat16"
    out: Path | None = Path("reports/perf")
    plant_slowdown: float = 0  # > 1: impls.planted_slowdown(factor) is active for the run; 0: none
    compile_flex: bool = True
    label: str = ""
    resume: bool = False  # keep the cells ``out/perf.json`` measured with these options; measure the rest


Prepare = Callable[[str, Cell, impls.Tensors], impls.Call]


def say(line: str) -> None:
    """Progress goes out at once: a run cut off by a time limit still shows what it measured."""
    print(line, flush=True)


def _dominates(big: Cell, small: Cell) -> bool:
    """``big`` needs at least the memory of ``small`` (same model and layer, no shorter, no smaller batch)."""
    return (
        big.model == small.model
        and big.layer == small.layer
        and big.length >= small.length
        and big.batch >= small.batch
    )


class Runner:
    """Measures cells one by one; ``prepare`` is injectable so the logic is testable without Unsloth."""

    def __init__(self, opts: Options, prepare: Prepare | None = None, log: Callable[[str], None] = say):
        self.opts = opts
        self.cuda = opts.device.startswith("cuda")
        self.prepare = prepare or (lambda name, cell, t: impls.prepare(name, cell, t, opts.compile_flex))
        self.log = log
        self.ooms: list[tuple[str, str, Cell]] = []  # (impl, mode, cell) that ran out of memory
        self.first_calls: dict[str, float] = {}  # "impl/mode" -> first call ever (compile) in ms

    def note_ooms(self, cell: Cell, res: dict[str, dict[str, dict]]) -> None:
        """Learn the out-of-memory results of a cell measured earlier (a resumed run), for inference."""
        for impl, by_mode in res.items():
            for mode, r in by_mode.items():
                if isinstance(r, dict) and r.get("status") == "oom" and not r.get("inferred_from"):
                    self.ooms.append((impl, mode, cell))

    def _inferred(self, impl: str, mode: str, cell: Cell) -> str | None:
        for i, m, c in self.ooms:
            if i == impl and (m == mode or (m == "fwd" and mode == "fwdbwd")) and _dominates(cell, c):
                return f"{c.key}:{m}"
        return None

    def measure(self, cell: Cell) -> dict[str, dict[str, dict]]:
        """``{impl: {mode: result}}`` for one cell; its tensors are freed before the next cell (when it returns;
        on CUDA the allocator's cache is emptied too)."""
        res = self._measure(cell)
        if self.cuda:  # CPU: no allocator cache nor memory measured; a collection costs 0.13 s (docs/perf.md)
            timing.release_memory()
        return res

    def _measure(self, cell: Cell) -> dict[str, dict[str, dict]]:
        o = self.opts
        res: dict[str, dict[str, dict]] = {i: {} for i in o.impls}
        holder: dict[str, impls.Tensors] = {}

        def make() -> timing.Outcome:
            holder["t"] = impls.make_tensors(cell, o.device, grid_dtype(o.dtype))
            return timing.Outcome("ok")

        made = timing.guarded(make)
        if made.status != "ok":
            for i in o.impls:
                res[i] = {m: {"status": made.status, "where": "inputs"} for m in o.modes}
                if made.status == "oom":
                    self.ooms.append((i, "fwd", cell))
            return res
        t = holder["t"]
        calls: dict[str, impls.Call] = {}
        for i in o.impls:
            if all(self._inferred(i, m, cell) for m in o.modes):
                continue

            def prep(i: str = i) -> timing.Outcome:
                calls[i] = self.prepare(i, cell, t)
                return timing.Outcome("ok")

            p = timing.guarded(prep)
            if p.status != "ok":
                res[i] = {m: {"status": p.status, "where": "prepare"} for m in o.modes}
                if p.status == "oom":
                    self.ooms.append((i, "fwd", cell))
        for mode in o.modes:
            active: list[str] = []
            for i in o.impls:
                if res[i].get(mode):
                    continue
                src = self._inferred(i, mode, cell)
                if src or i not in calls:
                    res[i][mode] = {"status": "oom", "inferred_from": src}
                    continue
                active.append(i)
            samples: dict[str, list[timing.Outcome]] = {i: [] for i in active}
            for i in list(active):  # the first call alone: compile time shows here
                out = self._call(calls[i], mode)
                if out.status != "ok":
                    self._fail(res, i, mode, cell, out.status, "first call")
                    active.remove(i)
                    continue
                res[i][mode] = {"first_call_ms": out.ms}
                self.first_calls.setdefault(f"{i}/{mode}", out.ms)
            for r in range(max(0, o.warmup - 1) + o.repeats):
                k = r % len(active) if active else 0
                for i in active[k:] + active[:k]:
                    if res[i][mode].get("status"):
                        continue
                    out = self._call(calls[i], mode)
                    if out.status != "ok":
                        self._fail(res, i, mode, cell, out.status, f"call {r + 2}")
                    elif r >= o.warmup - 1:
                        samples[i].append(out)
            for i in active:
                if res[i][mode].get("status"):
                    continue
                ms = [s.ms for s in samples[i]]
                peaks = [s.peak_bytes for s in samples[i] if s.peak_bytes is not None]
                res[i][mode].update(
                    status="ok",
                    times_ms=[round(x, 4) for x in ms],
                    **timing.summarize(ms),
                    peak_mib=(max(peaks) / 2**20) if peaks else None,
                )
        for i, call in calls.items():
            if hasattr(call, "sdpa_mode"):
                res[i]["sdpa_mode"] = call.sdpa_mode  # type: ignore[attr-defined]
            if hasattr(call, "finite") and any(
                r.get("status") == "ok" for r in res[i].values() if isinstance(r, dict)
            ):
                res[i]["finite"] = self._finite(call)
        return res

    @staticmethod
    def _finite(call: impls.Call) -> bool | str:
        """Whether the implementation's output is all finite (or why that could not be checked)."""
        got: list[bool] = []

        def check() -> timing.Outcome:
            got.append(call.finite())  # type: ignore[attr-defined]
            return timing.Outcome("ok")

        st = timing.guarded(check).status
        return got[0] if st == "ok" else st

    def _call(self, call: impls.Call, mode: str) -> timing.Outcome:
        return timing.guarded(lambda: timing.timed(lambda: call(mode), self.cuda))

    def _fail(self, res: dict, impl: str, mode: str, cell: Cell, status: str, where: str) -> None:
        first = res[impl].get(mode, {}).get("first_call_ms")
        res[impl][mode] = {"status": status, "where": where, "first_call_ms": first}
        if status == "oom":
            self.ooms.append((impl, mode, cell))


def grid_dtype(name: str) -> torch.dtype:
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    except KeyError:
        raise ValueError(f"--dtype {name!r}: use bfloat16, float16 or float32") from None


def derive(cell: Cell, res: dict[str, dict[str, dict]], ceiling_tflops: float | None) -> None:
    """Add TFLOP/s, fraction of the ceiling and ratios to the best (all, and softcapping only)."""
    for mode in grid.MODES:
        ok = {i: r[mode]["median_ms"] for i, r in res.items() if r.get(mode, {}).get("status") == "ok"}
        if not ok:
            continue
        best = min(ok.values())
        capped = [ms for i, ms in ok.items() if i in SOFTCAP_IMPLS]
        best_cap = min(capped) if capped else None
        f = grid.flops(cell, mode)
        for i, ms in ok.items():
            r = res[i][mode]
            r["tflops"] = f / (ms * 1e-3) / 1e12
            r["frac_of_ceiling"] = r["tflops"] / ceiling_tflops if ceiling_tflops else None
            r["x_best"] = ms / best
            r["x_best_softcap"] = ms / best_cap if best_cap and i in SOFTCAP_IMPLS else None


def cell_record(cell: Cell) -> dict:
    s = cell.shape
    return {
        "key": cell.key,
        "model": cell.model,
        "layer": cell.layer,
        "window": cell.window,
        "length": cell.length,
        "batch": cell.batch,
        "heads": s.n_heads,
        "kv_heads": s.n_kv_heads,
        "head_dim": s.head_dim,
        "scalar": s.scalar,
        "softcap": s.softcap,
        "flops": {m: grid.flops(cell, m) for m in grid.MODES},
        "score_matrix_gib": grid.score_matrix_bytes(cell) / 2**30,
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def configure_dynamo() -> None:
    """Raise dynamo's recompile limit: past it a compiled function silently runs eagerly, which
    would time the wrong thing (Unsloth's kernel and flex see many shapes in one run)."""
    try:
        import torch._dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(512, getattr(torch._dynamo.config, name)))
    except ImportError:
        pass


def run(opts: Options, prepare: Prepare | None = None, log: Callable[[str], None] = say) -> dict:
    """Measure ``opts.cells``; return the JSON payload (also written to ``opts.out/perf.json``)."""
    from . import table

    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA GPU; run on a GPU or pass --device cpu")
    configure_dynamo()
    started = time.monotonic()
    runner = Runner(opts, prepare, log)
    payload: dict = {
        "schema": SCHEMA,
        "label": opts.label,
        "versions": versions.versions(),
        "device": _device_name(opts.device),
        "dtype": opts.dtype,
        "timer": "cuda-events" if runner.cuda else "wall-clock",
        "options": {
            "impls": list(opts.impls),
            "modes": list(opts.modes),
            "repeats": opts.repeats,
            "warmup": opts.warmup,
            "budget_s": opts.budget_s,
            "plant_slowdown": opts.plant_slowdown,
            "compile_flex": opts.compile_flex,
        },
        "flop_formula": "fwd = 4*b*h*d*pairs(n, W); fwdbwd = 3*fwd; pairs = visible causal(/window) pairs",
        "ceiling": {},
        "cells": [],
        "first_calls_ms": runner.first_calls,
        "complete": False,
    }
    path = opts.out / "perf.json" if opts.out else None
    kept: dict[str, dict] = {}
    if opts.resume and path and path.exists():  # checked before anything is measured
        kept, payload["processes"] = resumable(load(path), payload, opts.cells)
        log(
            f"perf: resuming {path}: {len(kept)} of {len(opts.cells)} cells measured before "
            f"(by {len(payload['processes'])} process(es)), {len(opts.cells) - len(kept)} to measure"
        )
    else:
        payload["processes"] = []
    by_key = {c.key: c for c in opts.cells}
    for key, rec in kept.items():
        runner.note_ooms(by_key[key], rec["results"])
    this = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "first_calls_ms": runner.first_calls}
    payload["processes"].append(this)
    log(f"perf: {len(opts.cells)} cells x {len(opts.impls)} implementations on {payload['device']}")
    payload["ceiling"]["matmul"] = timing.matmul_ceiling(opts.device)
    payload["ceiling"]["copy"] = timing.copy_ceiling(opts.device)
    this["ceiling"] = payload["ceiling"]
    ceiling = payload["ceiling"]["matmul"]["tflops"]
    log(
        f"ceilings: {payload['ceiling']['matmul']['what']} {ceiling:.0f} TFLOP/s; "
        f"{payload['ceiling']['copy']['what']} {payload['ceiling']['copy']['gbps']:.0f} GB/s"
    )
    if "unsloth" in opts.impls and prepare is None:  # import once, before the clock of any cell
        from gemma2_regress import unsloth_adapter

        t0 = time.monotonic()
        payload["versions"]["unsloth_loaded"] = unsloth_adapter.load().version
        payload["unsloth_import_s"] = this["unsloth_import_s"] = round(time.monotonic() - t0, 1)
    plant = impls.planted_slowdown(opts.plant_slowdown) if opts.plant_slowdown else contextlib.nullcontext()
    log(table.header(opts.impls))
    cells = Progress("perf grid: cells", len(opts.cells), live=False, every_s=0.0)  # lines between table rows
    with plant:
        for k, cell in enumerate(opts.cells, 1):
            rec = cell_record(cell)
            if cell.key in kept:
                rec = kept[cell.key]
            elif opts.budget_s is not None and time.monotonic() - started > opts.budget_s:
                rec["results"] = {
                    i: {m: {"status": "skipped: time budget"} for m in opts.modes} for i in opts.impls
                }
            else:
                rec["results"] = runner.measure(cell)
                rec["process"] = len(payload["processes"]) - 1
                derive(cell, rec["results"], ceiling)
            payload["cells"].append(rec)
            for line in table.rows(rec, opts.impls, opts.modes):
                log(line)
            if log is say:  # the printed run (not a caller collecting lines): cells done / total, time left
                cells.update(k)
            payload["wall_s"] = this["wall_s"] = round(time.monotonic() - started, 1)
            if path:
                write_json_atomic(path, payload)
    payload["complete"] = True
    if path:
        write_json_atomic(path, payload)
    return payload


# What must match for a resumed run to add to an earlier one: the same experiment on the same build.
SAME_OPTIONS = ("impls", "modes", "repeats", "warmup", "plant_slowdown", "compile_flex")
SAME_RUN = ("device", "dtype", "timer")
SAME_VERSIONS = ("torch", "transformers", "unsloth", "gpu")


def identity(payload: dict) -> dict:
    """What makes two perf runs one experiment: ``SAME_OPTIONS``, ``SAME_RUN`` and ``SAME_VERSIONS``."""
    return {
        **{k: payload.get("options", {}).get(k) for k in SAME_OPTIONS},
        **{k: payload.get(k) for k in SAME_RUN},
        **{k: payload.get("versions", {}).get(k) for k in SAME_VERSIONS},
    }


def differences(have: dict, want: dict) -> list[str]:
    """``key have -> want`` for each key of ``want`` that ``have`` holds otherwise: why a stored run
    (``perf run --resume``, ``perf sensitivity``) cannot be resumed with these options."""
    return [f"{k} {have.get(k)} -> {want[k]}" for k in want if have.get(k) != want[k]]


def resumable(old: dict, new: dict, cells: Sequence[Cell]) -> tuple[dict[str, dict], list[dict]]:
    """The cells of an earlier run (``old``) that a run of the same options keeps, by key, and its
    processes; a run of other options or on another build is a one-line ``ValueError``.

    Kept: every cell of ``cells`` that the earlier run measured (OOMs and errors are results);
    cells skipped by its time budget are measured again, cells outside ``cells`` are dropped."""
    diffs = differences(identity(old), identity(new))
    if diffs:
        raise ValueError(
            f"--resume: the perf.json in --out was measured otherwise ({'; '.join(diffs)}); "
            "run with the same options and build, or give another --out"
        )
    wanted = {c.key for c in cells}
    kept = {
        rec["key"]: rec
        for rec in old.get("cells", [])
        if rec["key"] in wanted
        and not any(
            str(r.get("status", "")).startswith("skipped")
            for by_mode in rec["results"].values()
            for r in by_mode.values()
            if isinstance(r, dict)
        )
    }
    return kept, list(old.get("processes") or [{"first_calls_ms": old.get("first_calls_ms", {})}])


def load(path_or_payload: str | Path | dict) -> dict:
    """A perf payload from a path or as given; a wrong file is a one-line error."""
    import json

    if isinstance(path_or_payload, dict):
        data = path_or_payload
    else:
        p = Path(path_or_payload)
        if not p.exists():
            raise FileNotFoundError(
                f"{p}: no such perf JSON; write one with `python -m gemma2_regress.perf run`"
            )
        data = json.loads(p.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"not a perf result (schema {data.get('schema')!r}, expected {SCHEMA!r})")
    return data


def select_cells(payload: dict, keys: Sequence[str]) -> dict:
    """A copy of ``payload`` holding only the named cells (for the gate demonstration)."""
    out = dict(payload)
    out["cells"] = [c for c in payload["cells"] if c["key"] in set(keys)]
    return out
