"""Command-line checks shared by ``gemma2-regress bisect|gate``, ``python -m gemma2_regress.perf`` and the
kill matrix: bad input is one line on stderr that names the problem and the fix, and exit 2, before
anything is built, installed or run (and before any folder is made).

``OneLineParser`` is argparse with a one-line error (no usage block); the ``bounded`` and ``choices``
factories are argparse ``type=`` functions for values that would otherwise fail only late;
``unwritable`` says why an output path could not be written, checked up front.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``<prog>: error: <message> (...)``, exit 2.
    Subparsers made with ``add_subparsers`` inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def bounded(
    kind: type[int] | type[float], *, above: float | None = None, at_least: float | None = None
) -> Callable[[str], float]:
    """An argparse ``type``: a finite ``kind`` number ``> above`` and/or ``>= at_least``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole number' if kind is int else 'number'}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: give a finite number")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"{text!r}: must be more than {above:g}")
        if at_least is not None and not value >= at_least:
            raise argparse.ArgumentTypeError(f"{text!r}: must be at least {at_least:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


def choices(known: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type``: a non-empty comma list of names out of ``known`` (``cpu,gpu``)."""

    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
        bad = [n for n in names if n not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; "
                f"use a comma list of {', '.join(known)}"
            )
        return names

    parse.__name__ = what
    return parse


def unwritable(path: str | os.PathLike, *, folder: bool) -> str | None:
    """Why ``path`` (a folder, or a file when ``folder`` is false) could not be written, or None.

    Only looks: nothing is created. A missing path is fine when its nearest existing parent is a
    writable folder."""
    p = Path(path).expanduser()
    if p.exists():
        if folder and not p.is_dir():
            return f"{p} is a file, not a folder"
        if not folder and p.is_dir():
            return f"{p} is a folder, not a file"
        where = p if folder else p.parent
        return None if os.access(where, os.W_OK | os.X_OK) else f"{where} is not writable"
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so nothing can be made under it"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None
