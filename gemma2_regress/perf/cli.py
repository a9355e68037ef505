"""Command line: ``python -m gemma2_regress.perf [run|plot|compare|sensitivity] ...`` (``run`` when omitted).

run      measure the grid (``--quick`` default, ``--full``, ``--walls``, ``--smoke`` for CPU), print the
         table, write ``<out>/perf.json``, ``<out>/table.txt`` and ``<out>/perf_b<batch>.png``;
         ``--resume`` keeps the cells an earlier run of the same options left in ``<out>/perf.json``
plot     draw the PNGs from a perf JSON (on any machine with matplotlib)
table    print the table (and the walls summary) of a perf JSON
compare  the gate: candidate JSON vs baseline JSON; exit 0 pass, 1 fail, 2 bad input
sensitivity  the gate's false alarms and detection rate: a baseline, then --runs rounds of a clean run
         and one per planted --sizes slowdown, each compared with the gate, in one process; writes
         <out>/sensitivity.json (resumable) and <out>/sensitivity.md

Bad arguments (an unknown model, impl, mode, dtype or device, lengths like 4097..4095, a threshold
not above 1, a slowdown size not above 1, no rounds, an output folder that cannot be written, a
sensitivity --out or a ``run --resume`` --out holding a run with other options) are one line on stderr and exit 2, checked
before anything is measured or written. Parsing needs no torch (the gate checks --perf-args with it).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

from gemma2_regress.argcheck import OneLineParser, bounded, unwritable
from gemma2_regress.atomic import write_json_atomic
from gemma2_regress.gpu_check import cuda_device_count

from .stats import BARE_THRESHOLD, MIN_EFFECT

DEFAULT_BUDGET = {"quick": 200.0, "full": None, "walls": None, "smoke": None}
DTYPES = ("bfloat16", "float16", "float32")
DEVICE = re.compile(r"cpu|cuda(:\d+)?")


class _RaisingParser(OneLineParser):
    """For checking another command's arguments (the gate's --perf-args): an error is a ValueError."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _parser(cls: type[argparse.ArgumentParser] = OneLineParser) -> argparse.ArgumentParser:
    p = cls(
        prog="python -m gemma2_regress.perf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="measure (the default command)")
    g = r.add_mutually_exclusive_group()
    g.add_argument(
        "--quick",
        dest="preset",
        action="store_const",
        const="quick",
        help="2B and 9B, lengths 1024..32768 (4095-4097, 8192), batch 1; 9B batch 8 at 4096, 8192 (default on a GPU)",
    )
    g.add_argument(
        "--full",
        dest="preset",
        action="store_const",
        const="full",
        help="2B and 9B, lengths 1024..32768, batch 1, 2, 4, 8",
    )
    g.add_argument(
        "--walls",
        dest="preset",
        action="store_const",
        const="walls",
        help="where users hit walls: 2B and 9B at 4096, 8192, 16384 with batch 2, 4, 8, then batch 1 from "
        "32768 to 131072 tokens until each implementation runs out of memory",
    )
    g.add_argument(
        "--smoke",
        dest="preset",
        action="store_const",
        const="smoke",
        help="a tiny CPU shape around a 32 window (default without a GPU)",
    )
    r.add_argument("--models", help="comma list of 2b, 9b, tiny (replaces the preset's)")
    r.add_argument("--layers", help="sliding, global or both (default both)")
    r.add_argument("--lengths", help="e.g. 1024,4095..4097,8192")
    r.add_argument("--batch", help="e.g. 1,2,4,8")
    r.add_argument("--impls", default="unsloth,flex,sdpa", help="comma list of unsloth, flex, sdpa")
    r.add_argument("--modes", default="fwd,fwdbwd", help="fwd, fwdbwd or both")
    r.add_argument(
        "--repeats",
        type=bounded(int, at_least=1),
        default=7,
        help="timed calls per implementation and mode (median)",
    )
    r.add_argument(
        "--warmup",
        type=bounded(int, at_least=1),
        default=2,
        help="untimed calls first, the first included (>= 1)",
    )
    r.add_argument(
        "--budget-s",
        type=bounded(float, at_least=0),
        default=None,
        help="stop starting new cells after this many seconds (quick: 200; 0 = no budget)",
    )
    r.add_argument("--device", help="cuda (default when visible) or cpu")
    r.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    r.add_argument("--out", default="reports/perf", help="output folder (default reports/perf)")
    r.add_argument(
        "--plant-slowdown",
        type=bounded(float, at_least=0),
        nargs="?",
        const=2,
        default=0,
        metavar="FACTOR",
        help="plant a mutant: each call of Unsloth's kernel takes FACTOR (default 2; e.g. 1.15) x its own "
        "time; a whole FACTOR evaluates it FACTOR times",
    )
    r.add_argument(
        "--gate-demo",
        action="store_true",
        help="afterwards, re-measure two cells clean and planted and show the gate pass and fail",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="keep the cells <out>/perf.json already holds from a run of the same options and build "
        "(not those its budget skipped); measure the rest",
    )
    r.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    r.add_argument("--no-compile-flex", action="store_true", help="run flex attention eagerly (CPU default)")
    r.add_argument("--label", default="", help="a free-text name stored in the JSON (e.g. the env)")
    tb = sub.add_parser("table", help="print the table of a perf JSON")
    tb.add_argument("json")
    pl = sub.add_parser("plot", help="draw PNGs from a perf JSON")
    pl.add_argument("json")
    pl.add_argument("--out", help="folder for the PNGs (default: next to the JSON)")
    c = sub.add_parser("compare", help="gate: candidate vs baseline perf JSON")
    c.add_argument("candidate")
    c.add_argument("baseline")
    c.add_argument(
        "--min-effect",
        type=bounded(float, at_least=1),
        default=MIN_EFFECT,
        help=f"slower = the bootstrap interval of the time ratio lies above this (default {MIN_EFFECT}); "
        "the rule: gemma2_regress/perf/stats.py",
    )
    c.add_argument(
        "--threshold",
        type=bounded(float, above=1),
        default=BARE_THRESHOLD,
        help="for rows without per-repeat times (older JSONs): the bare time ratio that fails "
        f"(default {BARE_THRESHOLD})",
    )
    c.add_argument(
        "--mem-threshold",
        type=bounded(float, above=1),
        default=1.10,
        help="peak-memory ratio that fails (default 1.10)",
    )
    c.add_argument(
        "--basis",
        choices=("sdpa", "raw"),
        default="sdpa",
        help="sdpa: normalise by each run's in-run SDPA floor (default); raw: compare medians",
    )
    c.add_argument("--json", help="also write the rows to this JSON file")
    _sensitivity_parser(sub)
    return p


def _sizes(text: str) -> tuple[float, ...]:
    """An argparse ``type``: a comma list of slowdown factors, each above 1 (``1.05,1.15,1.5``)."""
    one = bounded(float, above=1)
    sizes = tuple(sorted({one(part.strip()) for part in text.split(",") if part.strip()}))
    if not sizes:
        raise argparse.ArgumentTypeError(f"{text!r}: give factors above 1, e.g. 1.05,1.15,1.5")
    return sizes


def _sensitivity_parser(sub: argparse._SubParsersAction) -> None:
    from .sensitivity import REPEATS, SIZES

    s = sub.add_parser(
        "sensitivity",
        help="measure the gate: false alarms on clean runs, detection of planted slowdowns",
        description="A baseline run, then per round a clean run and one per planted size, each compared "
        "with the gate against the baseline; Unsloth and the SDPA floor only, compiled once. Default cells: "
        "2B sliding 4096 and 8192 tokens, batch 1, fwd (on CPU: tiny sliding 64 and 128).",
    )
    s.add_argument("--models", help="comma list of 2b, 9b, tiny (default 2b; tiny on CPU)")
    s.add_argument("--layers", default="sliding", help="sliding, global or both (default sliding)")
    s.add_argument("--lengths", help="e.g. 4096,8192 (the default; 64,128 on CPU)")
    s.add_argument("--batch", default="1", help="e.g. 1 (the default)")
    s.add_argument("--modes", default="fwd", help="fwd, fwdbwd or both (default fwd)")
    s.add_argument(
        "--sizes",
        type=_sizes,
        default=SIZES,
        help=f"planted slowdown factors, each above 1 (default {','.join(f'{x:g}' for x in SIZES)})",
    )
    s.add_argument(
        "--runs", type=bounded(int, at_least=1), default=10, help="rounds (default 10; may grow on resume)"
    )
    s.add_argument(
        "--repeats",
        type=bounded(int, at_least=1),
        default=REPEATS,
        help=f"timed calls per implementation per run (default {REPEATS}: see perf/stats.py)",
    )
    s.add_argument("--warmup", type=bounded(int, at_least=1), default=2, help="untimed calls first (>= 1)")
    s.add_argument(
        "--budget-s",
        type=bounded(float, at_least=0),
        default=0,
        help="stop before a run that would end past this many seconds from the start (0 = none)",
    )
    s.add_argument("--device", help="cuda (default when visible) or cpu")
    s.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    s.add_argument(
        "--min-effect",
        type=bounded(float, at_least=1),
        default=MIN_EFFECT,
        help=f"the gate's minimum effect (default {MIN_EFFECT})",
    )
    s.add_argument(
        "--out", default="reports/perf-sensitivity", help="state and table (default reports/perf-sensitivity)"
    )


def _check(a: argparse.Namespace, preset: str) -> tuple[list, tuple[str, ...], tuple[str, ...]]:
    """``run``'s argument values, checked without measuring or writing anything: (cells, impls,
    modes); a bad value is a one-line ``ValueError``."""
    from . import grid

    if a.device and not DEVICE.fullmatch(a.device):
        raise ValueError(f"--device {a.device!r}: use cpu, cuda or cuda:N")
    if a.plant_slowdown and a.plant_slowdown <= 1:
        raise ValueError(
            f"--plant-slowdown {a.plant_slowdown:g}: a slowdown FACTOR is above 1 (1.15: each call 15 % "
            "slower; 2: the kernel twice), or leave the option out"
        )
    why = unwritable(a.out, folder=True)
    if why:
        raise ValueError(f"--out {a.out}: {why}; pass a writable folder")
    return (
        grid.select(preset, a.models, a.layers, a.lengths, a.batch),
        grid.parse_names(a.impls, grid.IMPLS, "impls"),
        grid.parse_names(a.modes, grid.MODES, "modes"),
    )


def check_run_args(argv: list[str]) -> None:
    """Check ``perf run`` arguments as ``run`` would (for the gate's ``--perf-args``, before its tiers
    run); raises ``ValueError`` with a one-line message."""
    a = _parser(_RaisingParser).parse_args(["run", *argv])
    _check(a, a.preset or "quick")


def _run(a: argparse.Namespace) -> int:
    import torch

    from . import plot, table
    from .bench import Options, run
    from .demo import gate_demo

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = a.preset or ("quick" if device.startswith("cuda") else "smoke")
    cells, impl_names, modes = _check(a, preset)
    device = _device(device)
    if not a.preset and device == "cpu" and not (a.models or a.lengths):
        print("perf: no CUDA GPU visible: running the CPU smoke grid (--smoke); the Gemma-2 grid needs a GPU")
    budget = DEFAULT_BUDGET[preset] if a.budget_s is None else (a.budget_s or None)
    opts = Options(
        cells=cells,
        impls=impl_names,
        modes=modes,
        repeats=a.repeats,
        warmup=a.warmup,
        budget_s=budget,
        device=device,
        dtype=a.dtype,
        out=Path(a.out),
        plant_slowdown=a.plant_slowdown,
        compile_flex=not a.no_compile_flex and device.startswith("cuda"),
        label=a.label,
        resume=a.resume,
    )
    try:
        payload = run(opts)  # prints the table's rows as the cells complete
    except KeyboardInterrupt:
        print(
            f"perf: interrupted; {Path(a.out) / 'perf.json'} keeps every cell finished before it, "
            "and the same command with --resume measures the rest",
            file=sys.stderr,
        )
        return 130
    text = table.render(payload)
    print(table.legend(payload))
    out = Path(a.out)
    (out / "table.txt").write_text(text + "\n")
    if a.gate_demo:
        demo = gate_demo(payload, opts)
        write_json_atomic(out / "gate_demo.json", demo)
    if not a.no_plot:
        if plot.available():
            for p in plot.plot(out / "perf.json"):
                print(f"plot: {p}")
        else:
            print(
                f"plots skipped: no matplotlib here; later: python -m gemma2_regress.perf plot {out / 'perf.json'}"
            )
    print(f"perf JSON: {out / 'perf.json'}  table: {out / 'table.txt'}")
    return 0


def _compare(a: argparse.Namespace) -> int:
    from .gatecheck import compare, render

    ok, rows = compare(
        a.candidate,
        a.baseline,
        a.threshold,
        min_effect=a.min_effect,
        mem_threshold=a.mem_threshold,
        basis=a.basis,
    )
    print(render(ok, rows, a.threshold, a.min_effect))
    if a.json:
        write_json_atomic(
            a.json, {"ok": ok, "min_effect": a.min_effect, "threshold": a.threshold, "rows": rows}
        )
    return 0 if ok else 1


def _device(name: str | None) -> str:
    """The device asked for (or the default), checked: a ``cuda:N`` torch does not see is refused."""
    import torch

    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        n = cuda_device_count()
        index = int(device.partition(":")[2] or 0)
        if index >= n:
            raise ValueError(
                f"--device {device}: torch sees {n} CUDA GPU(s); run on a GPU or pass --device cpu"
            )
    return device


def _sensitivity(a: argparse.Namespace, started: float) -> int:
    from . import grid, sensitivity
    from .bench import Options

    if a.device and not DEVICE.fullmatch(a.device):
        raise ValueError(f"--device {a.device!r}: use cpu, cuda or cuda:N")
    why = unwritable(a.out, folder=True)
    if why:
        raise ValueError(f"--out {a.out}: {why}; pass a writable folder")
    device = _device(a.device)
    cpu = device == "cpu"
    cells = grid.select(
        "smoke" if cpu else "quick",
        a.models or ("tiny" if cpu else "2b"),
        a.layers,
        a.lengths or ("64,128" if cpu else "4096,8192"),
        a.batch,
    )
    plan = sensitivity.Plan(
        run=Options(
            cells=cells,
            impls=sensitivity.IMPLS,
            modes=grid.parse_names(a.modes, grid.MODES, "modes"),
            repeats=a.repeats,
            warmup=a.warmup,
            device=device,
            dtype=a.dtype,
            compile_flex=False,
        ),
        sizes=a.sizes,
        runs=a.runs,
        budget_s=a.budget_s or None,
        out=Path(a.out),
        min_effect=a.min_effect,
    )
    sensitivity.load_state(plan)  # another experiment in --out: refused before anything runs
    state = sensitivity.run(plan, started=started)
    print(sensitivity.render(state))
    if state.get("stopped"):
        print(f"sensitivity: stopped ({state['stopped']}); the same command resumes it")
    print(f"sensitivity: {Path(a.out) / sensitivity.STATE}  {Path(a.out) / sensitivity.TABLE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    started = time.monotonic()  # the sensitivity budget counts from here
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "run":
            return _run(a)
        if a.cmd == "sensitivity":
            return _sensitivity(a, started)
        if a.cmd == "table":
            from .bench import load
            from .table import render

            print(render(load(a.json)))
            return 0
        if a.cmd == "plot":
            from .plot import plot

            for p in plot(a.json, a.out):
                print(f"plot: {p}")
            return 0
        return _compare(a)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"perf: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
