"""PNG plots of a perf JSON: time and peak memory against length, per implementation.

One figure per batch size (``perf_b<batch>.png``): a row per model, columns time-sliding,
time-global, memory-sliding, memory-global. Solid lines are forward+backward, dashed forward; an
``x`` on the top edge marks a length where that implementation ran out of memory; the dotted
vertical line is the 4096 sliding window. matplotlib (Agg) is optional: without it the run still
writes its JSON, and ``python -m gemma2_regress.perf plot perf.json`` draws the plots later.
"""

from __future__ import annotations

from pathlib import Path

from .bench import load
from .grid import GEMMA2_WINDOW

COLORS = {"unsloth": "tab:red", "flex": "tab:blue", "sdpa": "tab:gray"}
STYLE = {"fwdbwd": "-", "fwd": "--"}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(path_or_payload: str | Path | dict, out_dir: str | Path | None = None) -> list[Path]:
    """Draw the plots; returns the PNG paths (next to the JSON unless ``out_dir`` is given)."""
    if not available():
        raise RuntimeError(
            "matplotlib is not installed here; run `pip install matplotlib` or plot on another machine"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payload = load(path_or_payload)
    if out_dir is None:
        out_dir = Path(path_or_payload).parent if not isinstance(path_or_payload, dict) else Path(".")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    impls, modes = payload["options"]["impls"], payload["options"]["modes"]
    cells = payload["cells"]
    written = []
    for batch in sorted({c["batch"] for c in cells}):
        models = sorted({c["model"] for c in cells if c["batch"] == batch})
        fig, axes = plt.subplots(len(models), 4, figsize=(18, 3.6 * len(models)), squeeze=False)
        for row, model in enumerate(models):
            for col, (metric, layer) in enumerate(
                [
                    ("median_ms", "sliding"),
                    ("median_ms", "global"),
                    ("peak_mib", "sliding"),
                    ("peak_mib", "global"),
                ]
            ):
                ax = axes[row][col]
                sel = sorted(
                    (c for c in cells if c["batch"] == batch and c["model"] == model and c["layer"] == layer),
                    key=lambda c: c["length"],
                )
                for impl in impls:
                    for mode in modes:
                        pts = [
                            (c["length"], c["results"][impl][mode][metric])
                            for c in sel
                            if c["results"].get(impl, {}).get(mode, {}).get("status") == "ok"
                            and c["results"][impl][mode].get(metric) is not None
                        ]
                        ooms = [
                            c["length"]
                            for c in sel
                            if c["results"].get(impl, {}).get(mode, {}).get("status") == "oom"
                        ]
                        if pts:
                            xs, ys = zip(*pts, strict=True)
                            ax.plot(
                                xs,
                                ys,
                                STYLE[mode],
                                marker="o",
                                ms=3,
                                color=COLORS.get(impl),
                                label=f"{impl} {mode}",
                            )
                        for x in ooms:
                            ax.plot(
                                [x],
                                [1.0],
                                "x",
                                color=COLORS.get(impl),
                                ms=9,
                                mew=2,
                                transform=ax.get_xaxis_transform(),
                                clip_on=False,
                            )
                window = next(
                    (c["window"] for c in cells if c["model"] == model and c["window"]), GEMMA2_WINDOW
                )
                ax.axvline(window, ls=":", color="k", lw=1)
                ax.text(window, 0.02, f" W={window}", transform=ax.get_xaxis_transform(), fontsize=7)
                if not ax.lines[:-1] and metric == "peak_mib":
                    ax.text(
                        0.5,
                        0.5,
                        "no memory figures\n(no CUDA in this run)",
                        transform=ax.transAxes,
                        ha="center",
                        va="center",
                        fontsize=8,
                    )
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                what = "time (ms)" if metric == "median_ms" else "peak extra memory (MiB)"
                ax.set_title(f"{model} b={batch} {layer}: {what}", fontsize=9)
                ax.set_xlabel("sequence length")
                ax.grid(True, which="both", alpha=0.3)
                if row == 0 and col == 0:
                    ax.legend(fontsize=7)
        plant = payload["options"].get("plant_slowdown")
        fig.suptitle(
            f"{payload['device']}, {payload['dtype']}, unsloth {payload['versions'].get('unsloth')}"
            + (f"  [PLANTED SLOWDOWN x{plant:g}]" if plant else "")
            + "   (x on top: out of memory)",
            fontsize=10,
        )
        fig.tight_layout()
        dest = out_dir / f"perf_b{batch}.png"
        tmp = dest.with_name(dest.stem + ".tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(dest)
        written.append(dest)
    return written
