"""Progress of long work (a bisect's steps and each step's pytest run, the kill matrix's runs, the perf
grid's cells): ``done / total`` with the time spent and an estimate of the time left.

One ``Progress`` per piece of work. ``update(done)`` reports a count: on a terminal it rewrites one live
line in place; elsewhere (CI logs, a file) it prints a plain line, at most every ``every_s`` seconds
and always for the last item, so a log stays readable. ``line(text)`` prints a permanent line (clearing
a live line first): a verdict as it lands. The estimate is the mean time per item so far times the
items left; with nothing done yet it says so.

``PROGRESS_ENV`` names the JSON file in which the suite's pytest plugin (``plugins.report``) keeps a
run's own progress, ``{"total", "done", "failed", "elapsed_s"}``, rewritten atomically after each test;
``read_run_progress`` reads it back (None while it does not exist or is being replaced).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

PROGRESS_ENV = "GEMMA2_REGRESS_PROGRESS"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def estimate_left(done: int, total: int, elapsed_s: float) -> str:
    """About how long the ``total - done`` items left take at the mean pace so far."""
    if done >= total:
        return "done"
    if done <= 0:
        return "time left unknown until the first finishes"
    return f"about {duration(elapsed_s / done * (total - done))} left"


class Progress:
    """``what``: a short label (``bisect``, ``killmatrix cpu``); ``total``: how many items (an upper
    bound is fine: a bisect's step bound). ``live``: rewrite one line in place (default: whether
    ``stream`` is a terminal)."""

    def __init__(
        self,
        what: str,
        total: int,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        every_s: float = 30.0,
        clock=time.monotonic,
    ) -> None:
        self.what, self.total, self.every_s, self.clock = what, max(total, 0), every_s, clock
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.started = clock()
        self._last_plain = float("-inf")
        self._live_len = 0

    def text(self, done: int, note: str = "") -> str:
        elapsed = self.clock() - self.started
        left = estimate_left(done, self.total, elapsed)
        tail = f" - {note}" if note else ""
        return f"[{self.what}] {done}/{self.total} in {duration(elapsed)}, {left}{tail}"

    def update(self, done: int, note: str = "") -> None:
        """Report ``done`` of ``total`` (live: in place; plain: throttled, the last always)."""
        text = self.text(done, note)
        if self.live:
            pad = " " * max(self._live_len - len(text), 0)
            self.stream.write("\r" + text + pad)
            self._live_len = len(text)
            self.stream.flush()
            return
        now = self.clock()
        if done >= self.total or now - self._last_plain >= self.every_s:
            self._last_plain = now
            print(text, file=self.stream, flush=True)

    def clear(self) -> None:
        """Wipe a live line (before other output); it comes back with the next update."""
        if self.live and self._live_len:
            self.stream.write("\r" + " " * self._live_len + "\r")
            self.stream.flush()
            self._live_len = 0

    def line(self, text: str) -> None:
        """A permanent line, after clearing a live line."""
        self.clear()
        print(text, file=self.stream, flush=True)


def read_run_progress(path: str | Path) -> dict | None:
    """The progress a pytest run keeps in ``path`` (``PROGRESS_ENV``), or None (not there yet)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"total", "done"} <= set(data) else None
