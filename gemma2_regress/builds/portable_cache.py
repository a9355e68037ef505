"""A compile cache that travels to the next runner: torch's cache artifacts, merged, packed and loaded.

``torch.compiler.save_cache_artifacts()`` returns what this process's compiles made or found in the
local caches: Inductor's FX graphs (their Triton kernels bundled in), AOTAutograd entries and
autotuning results. ``load_cache_artifacts`` writes them into another machine's local caches, where the
same compiles then hit instead of compiling (and autotuning) again. The artifacts are keyed by what
was compiled and by the torch, Triton and GPU that compiled it: on another stack they are never hit,
which the run's hit rate (``plugins.costs``) then shows, and nothing else changes.

The flow, for ``builds.offline tier --pack-cache portable``:

- with ``ENV`` naming a folder, each pytest process (``plugins.compile_artifacts``) writes
  ``<folder>/<worker>.bin`` after every test that compiled or hit a cache;
- ``pack`` merges those files, each artifact once, compresses (xz) and splits the result into
  ``compile-cache.xz.aa, .ab, ...`` of at most ``parts.PART`` bytes (a runner's upload limit per file);
- ``load``, before the next run's test processes start, puts the parts' artifacts into the local caches.

Beside the parts travel the packing machine's ``records`` (``CARRIED``), each keyed by what decides it, so
that a runner of the same image skips what they record:

- ``compile-cache.vec-isa.json``: ``plugins.vec_isa``'s probe (which CPU vector ISAs Inductor may use;
  torch, Python, compiler, CPU flags);
- ``compile-cache.canary.json``: ``plugins.compile_canary``'s pass (torch.compile computed right; that
  probe's key, Triton, the driver and GPUs, the settings that reach the compilers);
- ``compile-cache.gpu-peaks.json``: ``plugins.gpu_budget``'s peaks (each GPU test's peak memory and its
  seconds; the GPU, torch, CUDA, Unsloth), so that its tests claim what they need rather than a worker's
  share, and ``plugins.schedule`` hands out the longest first by what they took;
- ``compile-cache.unsloth-import.json``: ``gpu_check``'s pass of ``import unsloth``, and
  ``compile-cache.tier-passed.json``: the noxfile's record of a whole GPU tier that passed, only where the
  packed run was one (``pack(whole=...)``), so that the next runner's tier starts as a warm one does
  (``suite.workers_per_gpu``); both keyed by the stack (Python, torch, Triton, transformers, TRL, Unsloth,
  unsloth_zoo, the GPU).

A record whose key differs from the loading machine's is never used; one made there wins.

``pack`` and ``load`` import torch, so the tier driver runs them as child processes
(``python -m gemma2_regress.builds.portable_cache pack|load``) in the tier's environment, whose
``TORCHINDUCTOR_CACHE_DIR`` decides where ``load`` writes.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gemma2_regress import records
from gemma2_regress.atomic import write_bytes_atomic, write_json_atomic
from gemma2_regress.builds.parts import Parts, joined

ENV = "GEMMA2_REGRESS_COMPILE_ARTIFACTS"
PREFIX = "compile-cache.xz."
# Records of the packing machine carried beside the parts: (kind, file beside the parts, what a line calls them).
CARRIED = (
    (records.VEC_ISA, "compile-cache.vec-isa.json", "vec-ISA"),
    (records.CANARY, "compile-cache.canary.json", "canary"),
    (records.GPU_PEAKS, "compile-cache.gpu-peaks.json", "GPU-peak"),
    (records.UNSLOTH_IMPORT, "compile-cache.unsloth-import.json", "Unsloth-import"),
    (records.GPU_TIER_PASSED, "compile-cache.tier-passed.json", "tier-passed"),
)
# xz compresses one stream on one core: 490 MiB of an H200 run took minutes. Slices of this size are
# compressed side by side (lzma releases the GIL) into concatenated streams, which lzma.decompress reads
# whole; preset 6's dictionary is 8 MiB, so a 32 MiB slice loses little of the ratio.
SLICE = 32 * 2**20


def save(folder: Path, name: str) -> int:
    """Write this process's artifacts so far to ``folder/<name>.bin`` (whole or not at all); bytes written,
    0 where nothing was compiled or torch is not imported (this never imports it)."""
    compiler = sys.modules.get("torch.compiler")
    got = compiler.save_cache_artifacts() if compiler is not None else None
    if not got:
        return 0
    write_bytes_atomic(folder / f"{name}.bin", got[0])
    return len(got[0])


def entries(blob: bytes) -> list[tuple[str, list]]:
    """Every ``(artifact type, artifacts)`` entry of one ``save_cache_artifacts`` result, in order.

    A process that saves more than once (``plugins.compile_artifacts`` saves after every test that
    compiled) writes one entry per save and type, each holding what was new since the save before.
    torch's own reader (``CacheArtifactManager.deserialize``) makes a dict of those entries and so keeps
    only the last save's artifacts of each type: a cold H200 run with 151 FX-graph misses packed 8.
    This reads every entry, with the serializer torch writes them with (``torch.compiler._cache``):
    a torch that changes it fails here, loudly, not in a later load."""
    from torch.compiler._cache import CacheArtifactManager, _deserialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    CacheArtifactManager._ensure_cache_artifacts_registered()
    try:
        return AppendingByteSerializer.to_list(blob, deserialize_fn=_deserialize_single_cache)
    except Exception as exc:  # torch raises AssertionError, struct.error, ... on a foreign or cut file
        raise ValueError(f"an artifact file did not deserialize (written by another torch?): {exc}") from exc


def merge(blobs: Sequence[bytes]) -> tuple[bytes, dict[str, int]]:
    """One artifact file holding every distinct artifact of ``blobs`` once, one entry per type (what
    ``torch.compiler.load_cache_artifacts`` reads whole), and the count per type.

    Distinct is by key *and* content, as torch itself records them: one FX-graph key holds a compiled
    variant per set of shape guards (a dynamic graph met at several shapes), each its own artifact, and
    keeping one per key would drop the others. Every entry of every blob counts (``entries``). torch
    offers save and load but no merge; this uses the serializer ``save_cache_artifacts`` uses."""
    from torch.compiler._cache import _serialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    merged: dict[str, dict[object, None]] = {}  # per type, the artifacts in first-seen order
    for blob in blobs:
        for kind, items in entries(blob):
            merged.setdefault(kind, {}).update(dict.fromkeys(items))
    writer = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    writer.extend((kind, list(items)) for kind, items in merged.items())
    return writer.to_bytes(), {kind: len(items) for kind, items in merged.items()}


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "no artifacts"


def compress(blob: bytes, threads: int | None = None) -> bytes:
    """``blob`` as xz (preset 6): one stream per ``SLICE`` bytes, compressed on ``threads`` threads (default:
    the cores this process may use), concatenated in order; ``lzma.decompress`` returns ``blob``."""
    from concurrent.futures import ThreadPoolExecutor

    slices = [blob[i : i + SLICE] for i in range(0, len(blob), SLICE)] or [b""]
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(slices)))) as pool:
        return b"".join(pool.map(lambda s: lzma.compress(s, preset=6), slices))


def pack(folder: Path, prefix: Path, *, whole: bool = True) -> str:
    """Merge ``folder/*.bin`` into ``<prefix>aa, ab, ...`` (xz, at most ``parts.PART`` bytes each); one line saying what.

    ``whole``: the run that wrote them was a whole GPU tier that passed. Otherwise the cache's record of an
    earlier whole pass stays behind: these artifacts may hold only part of the tier's graphs, and a runner
    that loaded them as warm would take the warm worker count for a cold run."""
    files = sorted(folder.glob("*.bin"))
    if not files:
        return f"portable compile cache: nothing to pack ({folder} holds no artifact file)"
    raw = sum(f.stat().st_size for f in files)
    blob, counts = merge([f.read_bytes() for f in files])
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=prefix.parent, prefix=".packing.") as tmp:
        with Parts(Path(tmp) / prefix.name) as sink:  # beside, then moved: no half-written parts if cut
            sink.write(compress(blob))
        for old in prefix.parent.glob(prefix.name + "*"):
            old.unlink()
        for part in sink.paths:
            os.replace(part, prefix.parent / part.name)
    total = sum((prefix.parent / p.name).stat().st_size for p in sink.paths)
    carried = _carry(prefix.parent, whole=whole)
    return (
        f"portable compile cache: {len(files)} process(es), {raw / 2**20:.1f} MiB -> merged {len(blob) / 2**20:.1f} MiB "
        f"({_counts(counts)}) -> {total / 2**20:.1f} MiB xz in {len(sink.paths)} part(s) {prefix}*{carried}"
    )


def _carry(beside: Path, *, whole: bool = True) -> str:
    """Write this machine's records (``CARRIED``; the tier-passed one only for a ``whole`` run, as ``pack``
    says) into the folder ``beside`` the parts; what to add to pack's line."""
    said = ""
    for kind, name, label in CARRIED:
        (beside / name).unlink(missing_ok=True)  # an older pack's record never rides with these parts
        if kind == records.GPU_TIER_PASSED and not whole:
            said += f", no {label} record (the run was not a whole tier that passed)"
            continue
        found = records.export(records.cache_folder(), kind)
        if found:
            write_json_atomic(beside / name, found)
            said += f", {len(found)} {label} record(s) in {name}"
    return said


def _restore(beside: Path) -> str:
    """Put the records packed in the folder ``beside`` the parts into this machine's cache; what to add to
    load's line."""
    said = ""
    for kind, name, label in CARRIED:
        try:
            found = json.loads((beside / name).read_text())
        except FileNotFoundError:
            continue
        said += (
            f", {records.import_(records.cache_folder(), kind, found)} of {len(found)} {label} record(s) new"
        )
    return said


def load(parts: Sequence[Path]) -> str:
    """Put the artifacts of ``parts`` (one packed cache) into this machine's local compile caches."""
    import torch

    with joined(parts) as stream:
        blob = lzma.decompress(stream.read())
    info = torch.compiler.load_cache_artifacts(blob)
    if info is None:
        return f"portable compile cache: {parts[0].name[:-2]}* did not load (another torch?); compiling cold"
    counts = {kind: len(keys) for kind, keys in info.artifacts.items()}
    where = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default cache folder")
    carried = _restore(parts[0].parent)
    return f"portable compile cache: loaded {_counts(counts)} from {len(parts)} part(s) into {where}{carried}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gemma2_regress.builds.portable_cache",
        description="Pack the artifact files a run wrote, or load packed parts into the local compile caches.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="merge FOLDER/*.bin into PREFIXaa, PREFIXab, ...")
    p.add_argument("folder", type=Path)
    p.add_argument("prefix", type=Path)
    p.add_argument(
        "--partial",
        action="store_true",
        help="the run was not a whole GPU tier that passed: leave the record of an earlier whole pass behind",
    )
    ld = sub.add_parser("load", help="load packed parts (in order) into the local compile caches")
    ld.add_argument("parts", type=Path, nargs="+")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.parts if not p.is_file()] if args.cmd == "load" else []
    if missing:  # (pack takes a missing folder as one that holds nothing: no test compiled)
        print(
            f"portable compile cache: no such part: {', '.join(missing)}; pass the parts a pack wrote "
            "(compile-cache.xz.aa, ...)",
            file=sys.stderr,
        )
        return 2
    try:
        said = (
            pack(args.folder, args.prefix, whole=not args.partial) if args.cmd == "pack" else load(args.parts)
        )
        print(said, flush=True)
    except (OSError, ValueError, KeyError, TypeError, lzma.LZMAError) as exc:
        print(f"portable compile cache: {args.cmd} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ENV", "PREFIX", "compress", "load", "merge", "pack", "save"]
