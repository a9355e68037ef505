"""The kernel tests' reference for long CPU cases, kept on disk from one run to the next.

``kernel.properties.prepared`` computes, for each case, the float64 golden, the same-dtype baseline and the
rule's floor (``properties.reference``). At Gemma-2's real window that is 1 to 2 s of CPU a case, and a
tier run meets the same cases every time (the ``ci`` profile draws deterministically). A stored entry is
used only where everything it was computed from is the same, so it is the value a fresh computation gives:

- the inputs, byte for byte (q, k, v and the padding mask), and the case's scalar, softcap, window, dtype;
- the code: every source file of ``gemma2_regress/reference/`` and the source of the functions that compute
  it (a function patched in at run time has another source, so another key);
- what decides the CPU's roundings: torch's version, its thread count, ATen's CPU capability, the CPU's
  flags and every variable a portability setting sets (``builds.reruns.SETTINGS``: ATen's, MKL's and
  oneDNN's kernel choices, the thread counts).

One file per key in the compile cache folder (``records.cache_folder``, under ``KIND``), written whole or
not at all; a file that does not load or holds other shapes is computed anew and replaced. The folder is
kept under ``MAX_BYTES`` by dropping the files least recently used. Only CPU cases of at least
``MIN_LOGITS`` logits are stored (the cheap ones are not worth a file); ``GEMMA2_REGRESS_REFERENCE_STORE=0``
turns the store off.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from gemma2_regress.atomic import write_bytes_atomic

KIND = "gemma2-regress-reference"
OFF_ENV = "GEMMA2_REGRESS_REFERENCE_STORE"  # "0": compute every reference in every run
MIN_LOGITS = 1 << 22  # bsz x heads x queries x keys: the real-window cases (4M to 134M), not the small ones
MAX_BYTES = 256 << 20  # a whole cpu tier stores 15 entries, 76 MB

Entry = tuple[torch.Tensor, torch.Tensor, "float | torch.Tensor"]


def enabled(device: str, logits: int) -> bool:
    """Whether a reference of ``logits`` logits on ``device`` is kept in the store."""
    return device == "cpu" and logits >= MIN_LOGITS and os.environ.get(OFF_ENV, "1") != "0"


@functools.cache
def _sources_digest() -> str:
    folder = Path(__file__).parent
    h = hashlib.sha256()
    for file in sorted(folder.glob("*.py")):
        h.update(file.name.encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def _stack() -> list[str]:
    # The variables the portability settings set are those that change the CPU's kernels (builds.reruns).
    from gemma2_regress.builds.reruns import SETTINGS
    from gemma2_regress.plugins.vec_isa import cpu_flags  # the flags the vec-ISA record is keyed by

    flags = cpu_flags()
    names = sorted({name for setting in SETTINGS for name in setting.env})
    return [
        torch.__version__,
        str(torch.get_num_threads()),
        torch.backends.cpu.get_cpu_capability(),
        *(f"{name}={os.environ.get(name, '')}" for name in names),
        " ".join(sorted(flags)) if flags else "",
    ]


def _source(fn: Callable) -> str:
    """``fn``'s source, or its bytecode where it has none on disk (made by ``exec``)."""
    try:
        return f"{fn.__module__}.{fn.__qualname__}\n{inspect.getsource(fn)}"
    except (OSError, TypeError):
        return f"{fn.__module__}.{fn.__qualname__}\n{fn.__code__.co_code.hex()}"


def key(tensors: Sequence[torch.Tensor | None], params: Sequence[object], code: Sequence[Callable]) -> str:
    """The digest of everything a stored reference is computed from (the module docstring)."""
    h = hashlib.sha256()
    for part in [*map(repr, params), _sources_digest(), *_stack()]:
        h.update(part.encode() + b"\0")
    for fn in code:
        h.update(_source(fn).encode() + b"\0")
    for t in tensors:
        if t is None:
            h.update(b"none\0")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def fetch(folder: Path, digest: str, compute: Callable[[], Entry]) -> Entry:
    """The stored entry for ``digest`` in ``folder``, else ``compute()``, stored before it is returned."""
    file = folder / KIND / f"{digest}.pt"
    try:
        entry = torch.load(file, weights_only=True)
        golden, baseline, floor = entry["golden"], entry["baseline"], entry["floor"]
        if golden.shape == baseline.shape and golden.dtype == torch.float64:
            os.utime(file)  # recently used: the last to be dropped
            return golden, baseline, floor
    except Exception:  # missing, cut short, or not an entry: computed anew below
        pass
    golden, baseline, floor = compute()
    buffer = io.BytesIO()
    torch.save({"golden": golden.cpu(), "baseline": baseline.cpu(), "floor": floor}, buffer)
    write_bytes_atomic(file, buffer.getvalue())
    _trim(file.parent)
    return golden, baseline, floor


def _trim(folder: Path, max_bytes: int = MAX_BYTES) -> None:
    """Drop the least recently used files of ``folder`` until it holds at most ``max_bytes``."""
    files = []
    for f in folder.glob("*.pt"):
        try:
            files.append((f.stat().st_mtime, f.stat().st_size, f))
        except FileNotFoundError:  # another worker dropped it
            pass
    total = sum(size for _, size, _ in files)
    for _, size, f in sorted(files):
        if total <= max_bytes:
            break
        f.unlink(missing_ok=True)
        total -= size
