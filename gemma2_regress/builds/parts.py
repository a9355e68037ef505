"""Files too large for one upload, written as numbered parts and read back as one stream.

A runner's upload or carry limits allow so much per file; ``Parts`` splits a stream into
``<prefix>aa, ab, ...`` (split(1)'s names) of at most ``PART`` bytes, and ``joined`` reads them back in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

PART = 15 * 2**20  # what a runner's upload limit allows per file (16 MiB), with room to spare


class Parts:
    """A write-only stream that splits into files of PART bytes, named like split(1)'s (aa, ab, ...)."""

    def __init__(self, prefix: Path):
        self.prefix, self.paths, self._f = prefix, [], None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._f is None or self._f.tell() >= PART:
                self._next()
            n = min(len(view), PART - self._f.tell())
            self._f.write(view[:n])
            view = view[n:]
        return len(data)

    def _next(self) -> None:
        if self._f:
            self._f.close()
        i = len(self.paths)
        path = self.prefix.with_name(self.prefix.name + chr(97 + i // 26) + chr(97 + i % 26))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.paths.append(path)
        self._f = open(path, "wb")

    def __enter__(self) -> Parts:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f:
            self._f.close()


@contextlib.contextmanager
def joined(parts: Sequence[Path]) -> Iterator[object]:
    """The parts read back as one stream."""
    files = [open(p, "rb") for p in parts]

    class Stream:
        def read(self, n: int = -1) -> bytes:
            out = b""
            while files and (n < 0 or len(out) < n):
                chunk = files[0].read(-1 if n < 0 else n - len(out))
                if not chunk:
                    files.pop(0).close()
                    continue
                out += chunk
            return out

    try:
        yield Stream()
    finally:
        for f in files:
            f.close()
